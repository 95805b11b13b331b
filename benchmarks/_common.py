"""Shared pieces of the jann benchmarks: thread limits, timing, recall, memory, reports.

Import this module before jax / faiss: `limit_threads` only works if it runs first (XLA
sizes its CPU thread pool when the backend starts). Nothing here imports jax at module
level; version look-ups import lazily, after the limits are in place.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]

XLA_THREADS_NOTE = (
    "XLA has no flag that sets the CPU thread count: 'intra_op_parallelism_threads' is a "
    "TensorFlow session option, not an XLA flag (as '--intra_op_parallelism_threads=N' in "
    "XLA_FLAGS jax aborts with 'Unknown flag in XLA_FLAGS'; without the leading '--' the "
    "token is silently ignored). XLA's CPU runtime sizes its pools to the CPUs the process "
    "may run on, so threads are limited with os.sched_setaffinity (which also binds faiss), "
    "plus faiss.omp_set_num_threads / OMP_NUM_THREADS. '--xla_cpu_multi_thread_eigen=true' "
    "is set (it is the default). cpu_util in the timings (CPU seconds / wall seconds of the "
    "best run) shows how many cores each library actually kept busy.")


# ---------------------------------------------------------------------------- threads
def limit_threads(threads: int) -> dict:
    """Restrict this process (and its children) to `threads` CPUs; call before jax/faiss."""
    available = sorted(os.sched_getaffinity(0))
    if threads < len(available):
        os.sched_setaffinity(0, available[:threads])
    os.environ["OMP_NUM_THREADS"] = str(threads)
    flag = "--xla_cpu_multi_thread_eigen=true"
    if flag not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
    return {
        "requested": threads,
        "cpus_available": len(available),
        "cpu_affinity": sorted(os.sched_getaffinity(0)),
        "XLA_FLAGS": os.environ["XLA_FLAGS"],
        "OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"],
        "jax_imported_before_limit": "jax" in sys.modules,
        "note": XLA_THREADS_NOTE,
    }


# ----------------------------------------------------------------------------- timing
def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float, float]:
    """fn() -> (result, wall s, process CPU s, CPU share other processes took meanwhile)."""
    snap, wall, cpu = cpu_snapshot(), time.perf_counter(), time.process_time()
    out = fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return out, wall, cpu, contention(snap, cpu_snapshot())["other_processes_cpu_fraction"]


def time_interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, tuple]:
    """Time several contenders fairly: warm-up each once, then `repeats` rounds of all.

    Each fn must finish its work before returning (block on jax results). The first call
    (compile, caches) is reported apart; rounds alternate contenders so slow spells of a
    shared machine hit them all alike. Returns {name: (last result, timing)} with timing
    {"first_s", "best_s", "runs_s", "cpu_util", "others_cpu", "runs_others_cpu"};
    cpu_util is process CPU time / wall time of the best run (about the number of busy
    cores), others_cpu the share of the machine's CPU other processes used during it.
    """
    first = {name: _timed(fn) for name, fn in fns.items()}
    runs = {name: [] for name in fns}
    for _ in range(max(repeats, 1)):
        for name, fn in fns.items():
            runs[name].append(_timed(fn))
    out = {}
    for name in fns:
        result, best, cpu, others = min(runs[name], key=lambda r: r[1])
        out[name] = (result, {"first_s": first[name][1], "best_s": best,
                              "runs_s": [r[1] for r in runs[name]], "cpu_util": cpu / best,
                              "others_cpu": others,
                              "runs_others_cpu": [r[3] for r in runs[name]]})
    return out


def time_best_of(fn: Callable[[], Any], repeats: int) -> tuple[Any, dict]:
    """`time_interleaved` for one contender: (last result, timing)."""
    return time_interleaved({"fn": fn}, repeats)["fn"]


def recall_at_k(found: np.ndarray, gt: np.ndarray, k: int) -> float:
    """Mean |found[:k] & gt[:k]| / k over queries (ids order-free, as ann-benchmarks)."""
    # One definition for the benchmarks and jann.autotune; imported late so that
    # limit_threads still runs before jax starts.
    from jann.autotune import recall_at_k as recall
    return recall(found, gt, k)


def cpu_snapshot() -> dict:
    """Machine-wide busy / steal CPU seconds (/proc/stat) and this process tree's own."""
    tick = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        user, nice, system, idle, iowait, irq, softirq, steal = (
            int(v) / tick for v in f.readline().split()[1:9])
    own = os.times()
    return {"busy_s": user + nice + system + irq + softirq, "steal_s": steal,
            "total_s": user + nice + system + idle + iowait + irq + softirq + steal,
            "own_s": own.user + own.system + own.children_user + own.children_system}


def contention(before: dict, after: dict) -> dict:
    """How much of the machine others used between two `cpu_snapshot`s (noise gauge).

    other_processes_cpu_fraction: CPU time of processes outside this benchmark (other
    users of a shared machine) over all CPU time available; steal_fraction: time the
    hypervisor gave to other guests; loadavg_1min at the end.
    """
    delta = {key: after[key] - before[key] for key in before}
    total = max(delta["total_s"], 1e-9)
    return {"other_processes_cpu_fraction": max(delta["busy_s"] - delta["own_s"], 0) / total,
            "steal_fraction": delta["steal_s"] / total,
            "loadavg_1min_end": os.getloadavg()[0]}


# ----------------------------------------------------------------------------- memory
def _proc_status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def current_rss() -> int:
    """Resident set size of this process, bytes."""
    return _proc_status_bytes("VmRSS")


def peak_rss() -> int:
    """Peak RSS (VmHWM) since start or since the last `reset_peak_rss`, bytes."""
    return _proc_status_bytes("VmHWM")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux clear_refs 5); False if not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class CompileClock:
    """Seconds jax spent tracing, lowering and compiling while active (jax.monitoring's
    compile events), so a build's first-call compile time is reported apart."""

    EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
              "/jax/core/compile/jaxpr_to_mlir_module_duration",
              "/jax/core/compile/backend_compile_duration")

    def __init__(self):
        self.seconds = 0.0

    def __call__(self, event, duration, **kwargs):
        if event in self.EVENTS:
            self.seconds += duration

    def __enter__(self):
        import jax
        jax.monitoring.register_event_duration_secs_listener(self)
        return self

    def __exit__(self, *exc):
        import jax
        jax.monitoring.unregister_event_duration_listener(self)


def run_tracked(fn: Callable[[], Any]) -> tuple[Any, dict]:
    """fn() with its wall time, the process RSS before, at peak during, and after, and
    the CPU share other processes took meanwhile."""
    reset_peak_rss()
    before, snap, start = current_rss(), cpu_snapshot(), time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    return out, {"seconds": seconds, "rss_before": before, "peak_rss": peak_rss(),
                 "rss_after": current_rss(),
                 "others_cpu": contention(snap, cpu_snapshot())["other_processes_cpu_fraction"]}


def run_child(module: str, args: list[str]) -> dict:
    """Run `python -m module args` from the repo root; it prints one JSON object last."""
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed ({proc.returncode}):\n"
                           f"{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- progress
class Progress:
    """A status line on stderr for long builds and sweeps, with no dependency.

    On a terminal the line is rewritten in place and a running task shows its elapsed
    time (a build is one opaque call, so elapsed time is all there is to show); in a log
    (CI, a pipe) each update is one plain line, so the log stays readable.
    """

    def __init__(self, stream=None, interval: float = 0.5):
        self.stream = sys.stderr if stream is None else stream
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = interval
        self._lock = threading.Lock()
        self._width = 0

    def _write(self, text: str, final: bool):
        with self._lock:
            if self.tty:
                pad = max(self._width - len(text), 0)
                self.stream.write("\r" + text + " " * pad + ("\n" if final else ""))
                self._width = 0 if final else len(text)
            elif final:
                self.stream.write(text + "\n")
            self.stream.flush()

    def line(self, text: str):
        """One finished line (kept on screen)."""
        self._write(text, final=True)

    def update(self, text: str):
        """A transient line: replaced by the next on a terminal, printed in a log."""
        self._write(text, final=not self.tty)

    @contextlib.contextmanager
    def task(self, label: str):
        """`with progress.task("build X"):` shows 'build X ... 12 s', then the total."""
        stop = threading.Event()
        start = time.perf_counter()

        def tick():
            while not stop.wait(self.interval):
                self._write(f"{label} ... {time.perf_counter() - start:.0f} s", final=False)

        ticker = threading.Thread(target=tick, daemon=True) if self.tty else None
        if ticker is None:
            self.line(f"{label} ...")
        else:
            ticker.start()
        try:
            yield
        except BaseException:
            stop.set()
            self.line(f"{label} failed after {time.perf_counter() - start:.1f} s")
            raise
        stop.set()
        if ticker is not None:
            ticker.join()
        self.line(f"{label} done in {time.perf_counter() - start:.1f} s")


# ---------------------------------------------------------------------------- reports
def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")),
                        platform.processor())
    except OSError:
        return platform.processor()


def machine_info() -> dict:
    """Platform, CPUs, memory, library versions and the date (UTC) of this run."""
    import psutil  # noqa: PLC0415  (lazy: keep module import light)
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": sorted(os.sched_getaffinity(0)),
        "memory_bytes": psutil.virtual_memory().total,
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in
                     ("jann", "jax", "jaxlib", "numpy", "faiss-cpu", "hnswlib", "matplotlib")},
    }


def write_json(path: Path, obj: Any) -> Path:
    """Write obj as indented JSON (numpy scalars converted), creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=json_default) + "\n")
    return path


def json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_figure(fig, ax, path: Path):
    """Grid, tight layout, PNG at 110 dpi, figure closed: the benchmarks' plot finish."""
    import matplotlib.pyplot as plt
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_log_log(fig, ax, path: Path, xlabel: str, ylabel: str):
    """Both axes logarithmic, labelled, a small legend, then `save_figure`."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    save_figure(fig, ax, path)


def write_markdown_and_plot(results: dict, json_path: Path, markdown, plot) -> str:
    """<stem>.md from markdown(results) and <stem>.png from plot(results, path) beside
    the JSON; returns the Markdown."""
    md = markdown(results)
    json_path.with_suffix(".md").write_text(md)
    try:
        plot(results, json_path.with_suffix(".png"))
    except ModuleNotFoundError as exc:  # the figures are the bench extra's, not the core's
        print(f"no {json_path.with_suffix('.png').name}: {exc.name} is not installed "
              "(pip install \".[bench]\")", file=sys.stderr)
    return md


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A GitHub Markdown table; floats printed with 3 significant digits."""
    def cell(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def gib(n_bytes: float) -> float:
    return n_bytes / 2**30
