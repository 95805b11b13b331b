"""Every kernel and the public search programs compile for H100 and A100 without a GPU
(`_gpu_compile_worker.py`, in its own process: XLA GPU, Triton, PTX and ptxas run here).

The CUDA compile toolchain (jax-cuda12-plugin and jax-cuda12-pjrt of jax's version,
nvidia-cuda-nvcc-cu12; ~575 MB) is kept out of the test environment, whose `import jax`
it would slow and fill with CUDA messages: install it into a folder and name it,

    pip install --target ~/.cache/jann/aot "jax-cuda12-plugin==$V" "jax-cuda12-pjrt==$V" \\
        nvidia-cuda-nvcc-cu12          # V = python -c 'import jax; print(jax.__version__)'
    JANN_AOT_DIR=~/.cache/jann/aot python -m pytest tests/test_gpu_compile.py

Without it the test skips, saying so.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
AOT_DIR = Path(os.environ.get("JANN_AOT_DIR", Path.home() / ".cache" / "jann" / "aot"))


@pytest.fixture(scope="module")
def compile_results():
    if not (AOT_DIR / "jax_plugins").is_dir() or not (AOT_DIR / "nvidia").is_dir():
        pytest.skip(f"no CUDA compile toolchain in {AOT_DIR} (JANN_AOT_DIR); see this "
                    "module's docstring to install it")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(AOT_DIR), str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(HERE / "_gpu_compile_worker.py")], env=env,
                          capture_output=True, text=True, timeout=1800)
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and results, proc.stderr[-3000:]
    return results


def test_every_case_compiles_for_h100_and_a100(compile_results):
    failed = [f"{r['case']}: {r.get('error')}" for r in compile_results if not r["ok"]]
    assert not failed, "\n".join(failed)
    targets = {r["case"].split()[0] for r in compile_results}
    assert targets == {"H100", "A100"}
