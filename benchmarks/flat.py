"""Exact (Flat) search: jann vs faiss-cpu, in one run with the same thread limit for both.

Run from the repo root:  python -m benchmarks.flat  [--threads 2 --repeats 3 ...]

What is measured and how
1. Fashion-MNIST (60k x 784 base, all 10k queries, k=10, squared L2 on pixels as float32):
   faiss IndexFlatL2 and jann "Flat" with float32, float16 and bfloat16 storage.
   - build: a fresh index plus `add` of the whole base. The first build (for jann it
     compiles the add kernels) is reported apart; then best of --repeats fresh builds.
   - search: all queries in one call, results made ready (`jax.block_until_ready`) and
     on the host. The first call (jann: compile) is reported apart; then best of
     --repeats. QPS = queries / best time; ratio = jann QPS / faiss QPS.
   - Repeats run in rounds over all libraries (faiss, fp32, fp16, bf16, faiss, ...), so
     slow spells of a shared machine hit all of them; max/best of the runs shows the
     noise; the JSON has every run and how much CPU other processes took meanwhile.
   - recall@k against the exact neighbours of gt_ids.npy.
2. Memory (shape test, random N(0,1) data): 10k queries against 1M x 128 float32 vectors,
   each library in its own subprocess (`--memory-child`) so its peak RSS (VmHWM, reset
   before each phase via /proc/self/clear_refs) is its own. Phases: data, build, for jann
   a warm-up search (one batch of jann's largest query bucket: it compiles the executable
   the timed run reuses; faiss has nothing to compile), then ONE timed search of all
   queries (10k x 1M is too slow on 2 cores to repeat). An (nq, N) float32 distance matrix
   would need 40 GB; jann streams the base in tiles, so the search must add only tens of
   MB over the RSS before it ("search extra"). Also reported: top-k agreement between
   the two libraries, and the others' CPU share of each phase (in the JSON).
3. Threads: both libraries are limited to --threads CPUs (see `_common.limit_threads`;
   XLA has no thread-count flag, so CPU affinity does it). cpu_util (CPU s / wall s)
   shows the cores each one kept busy.

Writes <out>/flat.json (all numbers + machine info), flat.md (the tables, also printed)
and flat.png (QPS bars with the jann/faiss ratio; peak RSS of the 1M x 128 run).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks._common import (
    REPO_ROOT, contention, cpu_snapshot, gib, limit_threads, machine_info, markdown_table,
    recall_at_k, run_child, run_tracked, time_interleaved, write_json)

DEFAULT_DATASET = REPO_ROOT.parent / "shared" / "data" / "fashion-mnist"
JANN_ENGINES = {
    "jann-fp32": "Flat", "jann-fp16": "Flat(float16)", "jann-bf16": "Flat(bfloat16)"}
ENGINES = ("faiss", *JANN_ENGINES)
MEMORY_ENGINES = ("jann-fp32", "faiss")


# ---------------------------------------------------------------------------- engines
@dataclasses.dataclass(frozen=True)
class Engine:
    """A library under test: build(xb) -> ready index; search(index, xq, k) -> ids (host).

    compiles: its first search of a shape compiles (jann); faiss has nothing to warm up.
    """

    name: str
    build: Callable[[np.ndarray], Any]
    search: Callable[[Any, np.ndarray, int], np.ndarray]
    compiles: bool


def _faiss_build(xb):
    import faiss
    index = faiss.IndexFlatL2(xb.shape[1])
    index.add(xb)
    return index


def _faiss_search(index, xq, k):
    return index.search(xq, k)[1]


def _jann_build(description, xb):
    import jax
    import jann
    return jax.block_until_ready(jann.add(jann.index_factory(xb.shape[1], description), xb))


def _jann_search(index, xq, k):
    import jax
    import jann
    return np.asarray(jax.block_until_ready(jann.search(index, xq, k=k))[1])


def make_engine(name: str) -> Engine:
    if name == "faiss":
        return Engine(name, _faiss_build, _faiss_search, compiles=False)
    description = JANN_ENGINES[name]
    return Engine(name, functools.partial(_jann_build, description), _jann_search,
                  compiles=True)


def setup_libraries(threads: int) -> dict:
    """Import faiss and jax (after `limit_threads`), set faiss's OpenMP threads."""
    import faiss
    import jax
    faiss.omp_set_num_threads(threads)
    return {"faiss_omp_max_threads": faiss.omp_get_max_threads(),
            "jax_backend": jax.default_backend(),
            "jax_devices": [str(d) for d in jax.devices()]}


# ----------------------------------------------------------------------- Fashion-MNIST
def load_dataset(path: Path) -> dict:
    """base / queries as float32 and the exact neighbour ids (see the dataset README)."""
    return {"xb": np.load(path / "base.npy").astype(np.float32),
            "xq": np.load(path / "queries.npy").astype(np.float32),
            "gt": np.load(path / "gt_ids.npy")}


def fashion_benchmark(path: Path, k: int, repeats: int) -> dict:
    """Build, then search with, every engine; timings interleaved across engines."""
    data = load_dataset(path)
    engines = {name: make_engine(name) for name in ENGINES}
    print("[fashion-mnist] build ...", file=sys.stderr, flush=True)
    builds = time_interleaved(
        {name: functools.partial(e.build, data["xb"]) for name, e in engines.items()}, repeats)
    print("[fashion-mnist] search ...", file=sys.stderr, flush=True)
    searches = time_interleaved(
        {name: functools.partial(e.search, builds[name][0], data["xq"], k)
         for name, e in engines.items()}, repeats)
    results = {name: _engine_result(builds[name][1], *searches[name], data, k)
               for name in engines}
    for result in results.values():
        result["qps_vs_faiss"] = result["qps"] / results["faiss"]["qps"]
    return {"dataset": str(path), "n": len(data["xb"]), "d": data["xb"].shape[1],
            "nq": len(data["xq"]), "k": k, "repeats": repeats, "engines": results}


def _engine_result(build: dict, ids: np.ndarray, search: dict, data: dict, k: int) -> dict:
    return {"build": build, "search": search,
            "first_call_overhead_s": search["first_s"] - search["best_s"],
            "qps": len(data["xq"]) / search["best_s"],
            f"recall@{k}": recall_at_k(ids, data["gt"], k)}


# ------------------------------------------------------------------------------ memory
def memory_child(args) -> dict:
    """One library on random (n, d) data, in this (fresh) process: phases with RSS."""
    from jann.batching import QUERY_BUCKETS
    engine = make_engine(args.memory_child)
    rng = np.random.default_rng(args.seed)
    n, d, nq, k = args.memory_n, args.memory_d, args.memory_nq, args.k
    (xb, xq), data = run_tracked(lambda: (rng.standard_normal((n, d), np.float32),
                                          rng.standard_normal((nq, d), np.float32)))
    index, build = run_tracked(lambda: engine.build(xb))
    phases = {"data": data, "build": build}
    if engine.compiles:
        warm = xq[: min(nq, max(QUERY_BUCKETS))]
        phases["warmup"] = run_tracked(lambda: engine.search(index, warm, k))[1]
    ids, phases["search"] = run_tracked(lambda: engine.search(index, xq, k))
    if args.save_ids:
        np.save(args.save_ids, ids)
    search = phases["search"]
    return {"engine": engine.name, "phases": phases,
            "peak_rss": max(p["peak_rss"] for p in phases.values()),
            "search_extra_peak": search["peak_rss"] - search["rss_before"],
            "search_s": search["seconds"], "qps": nq / search["seconds"]}


def _child_args(args, name: str, ids_path: Path) -> list[str]:
    return ["--memory-child", name, "--threads", str(args.threads), "--k", str(args.k),
            "--memory-n", str(args.memory_n), "--memory-d", str(args.memory_d),
            "--memory-nq", str(args.memory_nq), "--seed", str(args.seed),
            "--save-ids", str(ids_path)]


def memory_benchmark(args) -> dict:
    start = time.perf_counter()
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {name: Path(tmp) / f"{name}.npy" for name in MEMORY_ENGINES}
        for name in MEMORY_ENGINES:
            print(f"[memory] {name} subprocess ...", file=sys.stderr, flush=True)
            runs[name] = run_child("benchmarks.flat", _child_args(args, name, paths[name]))
        agreement = recall_at_k(*(np.load(paths[name]) for name in MEMORY_ENGINES), args.k)
    n, d, nq = args.memory_n, args.memory_d, args.memory_nq
    return {"n": n, "d": d, "nq": nq, "k": args.k, "data": "random normal float32",
            "database_bytes": n * d * 4, "full_distance_matrix_bytes": nq * n * 4,
            "topk_agreement_jann_vs_faiss": agreement,
            "wall_s": time.perf_counter() - start, "engines": runs}


# ----------------------------------------------------------------------------- reports
def fashion_table(fashion: dict) -> str:
    k = fashion["k"]
    rows = [[name, r["build"]["first_s"], r["build"]["best_s"], r["search"]["first_s"],
             r["search"]["best_s"], max(r["search"]["runs_s"]) / r["search"]["best_s"],
             round(r["qps"]), r[f"recall@{k}"], r["qps_vs_faiss"], r["search"]["cpu_util"],
             r["search"]["others_cpu"]]
            for name, r in fashion["engines"].items()]
    return markdown_table(
        ["library", "build first s", "build best s", "search first call s",
         "search best s", "search max/best", "QPS", f"recall@{k}", "QPS / faiss",
         "CPU util", "others' CPU share"], rows)


def memory_table(memory: dict) -> str:
    rows = [[name, f"{gib(r['peak_rss']):.2f}",
             f"{gib(r['phases']['search']['peak_rss']):.2f}",
             f"{gib(r['search_extra_peak']):.3f}", r["phases"]["build"]["seconds"],
             r["search_s"], round(r["qps"])]
            for name, r in memory["engines"].items()]
    return markdown_table(
        ["library", "process peak RSS GiB", "peak RSS during search GiB",
         "search extra over RSS before GiB", "build s", "search s (once)", "QPS"], rows)


def markdown_report(results: dict) -> str:
    fashion = results["fashion_mnist"]
    parts = [f"## Flat search, Fashion-MNIST ({fashion['n']} x {fashion['d']}, "
             f"{fashion['nq']} queries, k={fashion['k']}, {results['threads']['requested']} "
             f"threads)", "", fashion_table(fashion)]
    memory = results.get("memory")
    if memory:
        parts += ["", f"## Memory: {memory['nq']} queries vs {memory['n']} x {memory['d']} "
                  f"random float32 (database {gib(memory['database_bytes']):.2f} GiB; an "
                  f"(nq, N) float32 matrix would be "
                  f"{gib(memory['full_distance_matrix_bytes']):.1f} GiB)", "",
                  memory_table(memory), "",
                  f"top-{memory['k']} agreement jann vs faiss: "
                  f"{memory['topk_agreement_jann_vs_faiss']:.4f} (ids in common)"]
    parts += ["", f"Total run time: {results['total_s']:.0f} s"]
    return "\n".join(parts) + "\n"


def _plot_qps(ax, fashion: dict):
    names = list(fashion["engines"])
    qps = [fashion["engines"][n]["qps"] for n in names]
    bars = ax.bar(names, qps, color=["tab:gray"] + ["tab:blue"] * (len(names) - 1))
    for bar, name in zip(bars, names):
        r = fashion["engines"][name]
        ax.annotate(f"{r['qps']:.0f} QPS\n{r['qps_vs_faiss']:.2f}x faiss\n"
                    f"R@{fashion['k']}={r['recall@' + str(fashion['k'])]:.3f}",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, max(qps) * 1.3)
    ax.set_ylabel("queries / s (best of repeats)")
    ax.set_title(f"Fashion-MNIST Flat L2, {fashion['nq']} queries, k={fashion['k']}")


def _plot_memory(ax, memory: dict):
    names = list(memory["engines"])
    x = np.arange(len(names))
    total = [gib(memory["engines"][n]["peak_rss"]) for n in names]
    search = [gib(memory["engines"][n]["phases"]["search"]["peak_rss"]) for n in names]
    ax.bar(x - 0.2, total, 0.4, label="process peak RSS (incl. build)")
    ax.bar(x + 0.2, search, 0.4, label="peak RSS during search")
    for xi, height, n in zip(x, search, names):
        ax.annotate(f"search {memory['engines'][n]['search_s']:.1f} s", (xi + 0.2, height),
                    ha="center", va="bottom", fontsize=8)
    ax.axhline(gib(memory["database_bytes"]), color="k", ls="--",
               label=f"database {gib(memory['database_bytes']):.2f} GiB")
    ax.set_xticks(x, names)
    ax.set_ylim(0, max(total) * 1.3)
    ax.set_ylabel("GiB")
    ax.set_title(f"{memory['nq']} q vs {memory['n']}x{memory['d']}: (nq,N) f32 matrix would "
                 f"be {gib(memory['full_distance_matrix_bytes']):.0f} GiB", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")


def plot(results: dict, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    memory = results.get("memory")
    fig, axes = plt.subplots(1, 2 if memory else 1, figsize=(13 if memory else 7, 5),
                             squeeze=False)
    _plot_qps(axes[0, 0], results["fashion_mnist"])
    if memory:
        _plot_memory(axes[0, 1], memory)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    p.add_argument("--memory-n", type=int, default=1_000_000)
    p.add_argument("--memory-d", type=int, default=128)
    p.add_argument("--memory-nq", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--memory-child", choices=MEMORY_ENGINES, help=argparse.SUPPRESS)
    p.add_argument("--save-ids", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    start, cpu_start = time.perf_counter(), cpu_snapshot()
    args = parse_args(argv)
    threads = limit_threads(args.threads)
    threads.update(setup_libraries(args.threads))
    if args.memory_child:
        print(json.dumps(memory_child(args)))
        return
    results = {"machine": machine_info(), "threads": threads,
               "config": {key: str(v) if isinstance(v, Path) else v
                          for key, v in vars(args).items()},
               "fashion_mnist": fashion_benchmark(args.dataset, args.k, args.repeats)}
    if not args.skip_memory:
        results["memory"] = memory_benchmark(args)
    results["total_s"] = time.perf_counter() - start
    results["machine"]["contention_during_run"] = contention(cpu_start, cpu_snapshot())
    report = markdown_report(results)
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "flat.md").write_text(report)
    write_json(args.out / "flat.json", results)
    plot(results, args.out / "flat.png")


if __name__ == "__main__":
    main()
