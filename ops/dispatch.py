"""Every op's backend choice in one import: `backend="auto" | "xla" | "pallas"`.

The switch itself (`resolve_backend`, the process default, `choose`, what "auto" picks)
is `jann.ops.backend`; each op makes its own choice in its package's `__init__`:
`knn.knn_search` (and the public `knn`), `hamming.hamming_search`, `adc.adc_search`,
`ivf_scan.ivf_search`. This module re-exports them for callers that choose a backend
without caring which op folder holds it (`jann.api`, `jann.config`, the indexes,
benchmarks/gpu_kernels.py).
"""

from __future__ import annotations

from .adc import adc_search
from .backend import (
    BACKENDS, MEASURED_FASTER, MIN_COMPUTE_CAPABILITY, check_backend, choose, default_backend,
    kernels_supported, resolve_backend, set_default_backend)
from .hamming import hamming_search
from .ivf_scan import ivf_search
from .knn import knn, knn_search

__all__ = [
    "BACKENDS",
    "MEASURED_FASTER",
    "MIN_COMPUTE_CAPABILITY",
    "adc_search",
    "check_backend",
    "choose",
    "default_backend",
    "hamming_search",
    "ivf_search",
    "kernels_supported",
    "knn",
    "knn_search",
    "resolve_backend",
    "set_default_backend",
]
