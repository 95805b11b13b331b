"""One switch between the XLA scans and the Pallas kernels: `backend="auto" | "xla" | "pallas"`.

- "xla": the streamed XLA scans (`knn.knn_scan`, `hamming.knn_hamming_scan`,
  `pallas.pq.adc_top_k_xla`, and the IVF index's list-major scan, which passes itself to
  `choose` with `pallas.ivf.ivf_scan_pallas`), what every platform can run.
- "pallas": the Pallas kernel, compiled (Triton) where the program is lowered for CUDA and
  run by the Pallas interpreter on every other platform (slow; for tests and debugging).
  The platform is chosen with `lax.platform_dependent`, i.e. when the program is lowered,
  so a CUDA export made on a CPU machine holds the kernel.
- "auto": the kernel on CUDA for the kernels listed in `MEASURED_FASTER`, XLA otherwise.

Pallas kernels have no autodiff rule: differentiate through "xla" (or "auto" while it
picks XLA).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from .errors import InvalidInputError
from .hamming import knn_hamming_scan
from .knn import knn_scan
from .pallas.hamming import knn_hamming_pallas
from .pallas.knn import knn_pallas
from .pallas.pq import adc_top_k_pallas, adc_top_k_xla

__all__ = [
    "BACKENDS",
    "MEASURED_FASTER",
    "adc_search",
    "check_backend",
    "choose",
    "hamming_search",
    "knn_search",
]

BACKENDS = ("auto", "xla", "pallas")

# Kernels that "auto" runs as Pallas on CUDA: only those measured faster than their XLA
# path on a GPU (benchmarks/gpu_check.sh writes benchmarks/results/gpu_kernels.json),
# with the figures quoted here. No GPU measurement exists yet, so the set is empty and
# "auto" is XLA on every platform.
MEASURED_FASTER: frozenset[str] = frozenset()

# Metrics the fused knn kernel ranks (cosine arrives normalised, as inner products).
_KERNEL_METRICS = {"l2": "l2", "ip": "ip", "cosine": "ip"}


def check_backend(backend) -> str:
    if backend not in BACKENDS:
        raise InvalidInputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def choose(kernel: str, backend: str, xla_fn, pallas_fn, *args):
    """Run xla_fn(*args) or pallas_fn(*args, interpret=...) as `backend` says."""
    if backend == "xla" or (backend == "auto" and kernel not in MEASURED_FASTER):
        return xla_fn(*args)
    compiled = functools.partial(pallas_fn, interpret=False)
    fallback = xla_fn if backend == "auto" else functools.partial(pallas_fn, interpret=True)
    return jax.lax.platform_dependent(*args, cuda=compiled, default=fallback)


def knn_search(xq, xb, k: int, metric: str, p: float = 2.0, *, xb_sqnorms=None,
               xb_valid=None, n_rows=None, backend: str = "auto"):
    """`knn.knn_scan`'s contract (same arguments and results) on the chosen backend.
    Metrics other than l2 / ip / cosine always take the XLA path."""
    kernel_metric = _KERNEL_METRICS.get(metric)
    if kernel_metric is None:
        backend = "xla"

    def xla(xq, xb, xb_sqnorms, xb_valid, n_rows):
        return knn_scan(xq, xb, k, metric, p, xb_sqnorms=xb_sqnorms, xb_valid=xb_valid,
                        n_rows=n_rows)

    def pallas(xq, xb, xb_sqnorms, xb_valid, n_rows, interpret):
        if n_rows is not None:  # the kernel takes the existing rows as part of its mask
            exists = jnp.arange(xb.shape[0], dtype=jnp.int32) < n_rows
            xb_valid = exists if xb_valid is None else xb_valid & exists
        return knn_pallas(xq, xb, k, kernel_metric, xb_sqnorms=xb_sqnorms,
                          xb_valid=xb_valid, interpret=interpret)

    return choose("knn", backend, xla, pallas, xq, xb, xb_sqnorms, xb_valid, n_rows)


def hamming_search(xq_codes, xb_codes, k: int, *, xb_valid=None, backend: str = "auto"):
    """`hamming.knn_hamming_scan`'s contract on the chosen backend."""
    def xla(xq, xb, xb_valid):
        return knn_hamming_scan(xq, xb, k, xb_valid=xb_valid)

    def pallas(xq, xb, xb_valid, interpret):
        return knn_hamming_pallas(xq, xb, k, xb_valid=xb_valid, interpret=interpret)

    return choose("hamming", backend, xla, pallas, xq_codes, xb_codes, xb_valid)


def adc_search(tables, codes, k: int, nbits: int, metric: str = "l2", *, xb_valid=None,
               backend: str = "auto"):
    """k best PQ codes per query from look-up tables (`pallas.pq.adc_top_k_pallas`'s
    contract) on the chosen backend."""
    def xla(tables, codes, xb_valid):
        return adc_top_k_xla(tables, codes, k, nbits, metric, xb_valid=xb_valid)

    def pallas(tables, codes, xb_valid, interpret):
        return adc_top_k_pallas(tables, codes, k, nbits, metric, xb_valid=xb_valid,
                                interpret=interpret)

    return choose("adc", backend, xla, pallas, tables, codes, xb_valid)
