"""Every kernel and the public search programs compile for H100, A100 and TPU v5e without
an accelerator (`_gpu_compile_worker.py`: XLA GPU, Triton, PTX and ptxas, or libtpu's
compiler, run on this CPU machine; nothing executes).

The compile toolchains (jax-cuda12-plugin and jax-cuda12-pjrt of jax's version and
nvidia-cuda-nvcc-cu12, ~575 MB; libtpu at the version jax[tpu] pins) stay out of the test
environment, whose `import jax` they would slow and fill with CUDA / TPU messages: they
live in their own folder (JANN_AOT_DIR, default ~/.cache/jann/aot), which the first run
fills with `pip install --target` and later runs reuse. The workers run in processes of
their own with that folder on their path, one per target (H100, A100, TPU v5e) side by
side.

A program that compiled before with the same inputs (its lowered text, the target, the
XLA flags, the compilers' versions) is not compiled again: `_gpu_compile_worker.py` keeps
a mark per such program in JANN_COMPILE_CHECK_CACHE (default ~/.cache/jann/aot-results;
"off" compiles everything), so a run pays for what changed. A new or changed kernel, a new
toolchain or a new target compiles in full. The sharded programs and the memory case are
compiled every run (their checks read the compiled program).
"""

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
AOT_DIR = Path(os.environ.get("JANN_AOT_DIR", Path.home() / ".cache" / "jann" / "aot"))
WORKER_TIMEOUT = 1500


def _toolchain_requirements():
    version = importlib.metadata.version("jax")
    libtpu = [r.split(";")[0].strip() for r in importlib.metadata.requires("jax") or ()
              if r.startswith("libtpu") and 'extra == "tpu"' in r]
    return [f"jax-cuda12-plugin=={version}", f"jax-cuda12-pjrt=={version}",
            "nvidia-cuda-nvcc-cu12", *libtpu]


def _installed():
    return all((AOT_DIR / name).is_dir() for name in ("jax_plugins", "nvidia", "libtpu"))


def _compile_everywhere(workers):
    """Install the toolchain if missing, run a worker per target (each Popen also put in
    `workers`, so a session that ends early can stop them); {target: (returncode,
    report lines, stderr tail)}, or a string saying why the check cannot run."""
    if not _installed():
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--upgrade", "--target",
             str(AOT_DIR), *_toolchain_requirements()], capture_output=True, text=True)
        if proc.returncode != 0 or not _installed():
            return (f"the compile toolchain could not be installed into {AOT_DIR} "
                    f"(pip: {proc.stderr.strip()[-500:]})")
    # (jann comes from the installed package: its jann.ops lives in ops/, which a plain
    # path entry for the checkout would not map)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(AOT_DIR), os.environ.get("PYTHONPATH", "")]))
    # (jax's own cache cannot load a compile-only client's executable back: the worker
    # remembers what compiled in a cache of its own)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    workers.update({target: subprocess.Popen(
        [sys.executable, str(HERE / "_gpu_compile_worker.py"), target], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for target in ("H100", "A100", "tpu")})
    results = {}
    for target, proc in workers.items():
        out, err = proc.communicate(timeout=WORKER_TIMEOUT)
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        results[target] = (proc.returncode, lines, err[-3000:])
    return results


RESULTS_ENV = "JANN_COMPILE_CHECK_RESULTS"


class _Background(threading.Thread):
    """The compile check running beside the rest of the suite, started by the process that
    runs the session (conftest; with pytest-xdist, the controller), as the other tests
    keep one core per test process busy at most. The workers are processes; this thread
    waits for them and writes their results, as JSON, to `path`, where the tests (in
    whichever process runs them) read them."""

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path = path
        self.workers = {}

    def run(self):
        try:
            results = _compile_everywhere(self.workers)
            document = {"skip": results} if isinstance(results, str) else {"results": results}
        except Exception as e:  # noqa: BLE001  (the tests fail with it)
            document = {"error": f"{type(e).__name__}: {e}"}
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(document))
        partial.replace(self.path)

    def stop(self):
        for proc in self.workers.values():
            proc.kill()


_BACKGROUND: _Background | None = None


def start_in_background(folder) -> None:
    """Start the check once per session, its results to go to a file in `folder`; child
    processes (test workers) find the file through the environment."""
    global _BACKGROUND
    if _BACKGROUND is None:
        path = Path(folder) / "compile-check.json"
        os.environ[RESULTS_ENV] = str(path)
        _BACKGROUND = _Background(path)
        _BACKGROUND.start()


def stop_background():
    if _BACKGROUND is not None:
        _BACKGROUND.stop()
        shutil.rmtree(_BACKGROUND.path.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def compile_results(tmp_path_factory):
    if RESULTS_ENV not in os.environ:  # this file run on its own
        start_in_background(tmp_path_factory.mktemp("compile-check"))
    path = Path(os.environ[RESULTS_ENV])
    deadline = time.monotonic() + WORKER_TIMEOUT + 600
    while not path.exists():
        if time.monotonic() > deadline:
            pytest.fail(f"the compile check wrote no results to {path}")
        time.sleep(1.0)
    document = json.loads(path.read_text())
    if "error" in document:  # e.g. a worker past its timeout: a failure
        pytest.fail(document["error"])
    if "skip" in document:
        # Only an environment that cannot install the toolchain skips (no package index).
        pytest.skip(document["skip"])
    return document["results"]


def _check(results, target):
    returncode, lines, err = results[target]
    assert returncode == 0 and lines, err
    failed = [f"{r['case']}: {r.get('error')}" for r in lines if not r["ok"]]
    assert not failed, "\n".join(failed)
    return [r["case"] for r in lines]


@pytest.mark.parametrize("target", ["H100", "A100"])
def test_every_kernel_and_search_compiles_for_nvidia(compile_results, target):
    cases = _check(compile_results, target)
    # 7 d x 4 k x (3 knn dtypes + hamming + ivf + 2 adc widths) kernels, then programs
    assert sum(c.split()[1] in ("knn", "hamming", "ivf", "adc") for c in cases) == 196
    assert sum("sharded x4 search" in c for c in cases) == 6
    assert any("temp memory" in c for c in cases)


def test_every_index_kind_compiles_for_tpu_v5e(compile_results):
    cases = _check(compile_results, "tpu")
    assert len(cases) >= 9 and sum("sharded x4 search" in c for c in cases) == 3
