#!/usr/bin/env bash
# The GPU check of issue 5, for a machine with one NVIDIA GPU (a few minutes on an H200):
# the kernel tests on the GPU (backend="pallas" then runs the compiled Triton kernels),
# then each Pallas kernel timed against its XLA path into benchmarks/results/gpu_kernels.json.
# `--dry-run` runs the benchmark at tiny shapes on any machine (what CI checks).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--dry-run" ]]; then
    exec python -m benchmarks.gpu_kernels --dry-run
fi

backend=$(python -c "import jax; print(jax.default_backend())")
if [[ "$backend" != "gpu" ]]; then
    echo "gpu_check: jax sees no GPU (backend: $backend); install jax[cuda12]" >&2
    exit 2
fi

# First the deviceless compile check (tests/test_gpu_compile.py; its toolchain folder,
# JANN_AOT_DIR, is optional on a GPU machine: it skips without one).
python -m pytest -q tests/test_gpu_compile.py
python -m pytest -q tests/test_backend.py tests/test_pallas.py tests/test_ops.py tests/test_flat.py \
    tests/test_hamming.py
python -m benchmarks.gpu_kernels --out benchmarks/results/gpu_kernels.json
