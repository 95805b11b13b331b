"""One switch between the XLA scans and the Pallas kernels: `backend="auto" | "xla" | "pallas"`.

- "xla": the streamed XLA scans (`knn.knn_scan`, `hamming.knn_hamming_scan`,
  `pallas.pq.adc_top_k_xla`, and the IVF index's list-major scan, which passes itself to
  `choose` with `pallas.ivf.ivf_scan_pallas`), what every platform can run.
- "pallas": the Pallas kernel, compiled (Triton) where the program is lowered for CUDA and
  run by the Pallas interpreter on every other platform (slow; for tests and debugging).
  The platform is chosen with `lax.platform_dependent`, i.e. when the program is lowered,
  so a CUDA export made on a CPU machine holds the kernel.
- "auto": the kernel on CUDA for the kernels listed in `MEASURED_FASTER`, XLA otherwise.

"pallas" is a request for the kernel wherever a step has one; steps with none (range
search, graph beam search, the coarse quantizer) run their XLA path. The process-wide
default, used when a call names no backend, is `JANN_BACKEND` from the environment or
`set_default_backend` (`jann.config`), else "auto".

XLA's Triton runs on compute capability 8.0 and newer (Ampere): where the attached GPU is
older (Colab's free T4, sm_75), "pallas" raises `UnsupportedBackendError` and "auto" stays
on XLA, so no program is built that the device cannot compile.

Pallas kernels have no autodiff rule: differentiate through "xla" (or "auto" while it
picks XLA).
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp

from .distances import canonical_metric, normalize_L2
from .errors import InvalidInputError, UnsupportedBackendError
from .hamming import knn_hamming_scan
from .knn import check_pair, knn_scan
from .pallas.hamming import knn_hamming_pallas
from .pallas.knn import knn_pallas
from .pallas.pq import adc_top_k_pallas, adc_top_k_xla
from .topk import check_k

__all__ = [
    "BACKENDS",
    "MEASURED_FASTER",
    "adc_search",
    "check_backend",
    "choose",
    "default_backend",
    "kernels_supported",
    "resolve_backend",
    "set_default_backend",
    "hamming_search",
    "knn",
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


# Oldest GPU generation XLA's Triton compiles for ("Triton support is only enabled for
# Ampere GPUs" below it).
MIN_COMPUTE_CAPABILITY = (8, 0)
_default = None  # set_default_backend's value; None: JANN_BACKEND or "auto"


def check_backend(backend) -> str:
    if backend not in BACKENDS:
        raise InvalidInputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "pallas":
        older = _gpus_below_triton_minimum()
        if older:
            raise UnsupportedBackendError(
                f"backend='pallas' needs a GPU of compute capability "
                f"{'.'.join(map(str, MIN_COMPUTE_CAPABILITY))} or newer for XLA's Triton; "
                f"{older[0]} is older: use backend='auto' or 'xla'")
    return backend


def set_default_backend(backend: str | None) -> str | None:
    """The backend of calls that name none (None: back to JANN_BACKEND, else "auto");
    returns the setting it replaces."""
    global _default
    before, _default = _default, None if backend is None else check_backend(backend)
    return before


def default_backend() -> str:
    if _default is not None:
        return _default
    env = os.environ.get("JANN_BACKEND")
    if env is None or env == "":
        return "auto"
    if env not in BACKENDS:
        raise InvalidInputError(f"JANN_BACKEND must be one of {BACKENDS}, got {env!r}")
    return env


def resolve_backend(backend=None) -> str:
    """A call's backend: the one it names, else the process default; checked."""
    return check_backend(default_backend() if backend is None else backend)


@functools.cache
def _gpus_below_triton_minimum() -> tuple[str, ...]:
    """Attached CUDA devices too old for Triton (none on CPU, TPU or a deviceless
    compile, which targets what its topology names)."""
    try:
        devices = jax.devices()
    except RuntimeError:
        return ()
    older = []
    for device in devices:
        capability = getattr(device, "compute_capability", None)
        if device.platform != "gpu" or not capability:
            continue
        major, _, minor = str(capability).partition(".")
        if (int(major), int(minor or 0)) < MIN_COMPUTE_CAPABILITY:
            older.append(f"{device.device_kind} (sm_{major}{minor or 0})")
    return tuple(older)


def kernels_supported() -> bool:
    """Whether the attached devices can run the Triton kernels ("auto" asks this)."""
    return not _gpus_below_triton_minimum()


def choose(kernel: str, backend: str, xla_fn, pallas_fn, *args):
    """Run xla_fn(*args) or pallas_fn(*args, interpret=...) as `backend` says."""
    if backend == "xla" or (backend == "auto" and (kernel not in MEASURED_FASTER
                                                   or not kernels_supported())):
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
        return knn_pallas(xq, xb, k, kernel_metric, xb_sqnorms=xb_sqnorms,
                          xb_valid=_with_row_count(xb, xb_valid, n_rows), interpret=interpret)

    return choose("knn", backend, xla, pallas, xq, xb, xb_sqnorms, xb_valid, n_rows)


def _with_row_count(xb, xb_valid, n_rows):
    """The kernels take the existing rows (n_rows) as part of their row mask."""
    if n_rows is None:
        return xb_valid
    exists = jnp.arange(xb.shape[0], dtype=jnp.int32) < n_rows
    return exists if xb_valid is None else xb_valid & exists


def hamming_search(xq_codes, xb_codes, k: int, *, xb_valid=None, n_rows=None,
                   backend: str = "auto"):
    """`hamming.knn_hamming_scan`'s contract (int32 distances) on the chosen backend."""
    def xla(xq, xb, xb_valid, n_rows):
        return knn_hamming_scan(xq, xb, k, xb_valid=_with_row_count(xb, xb_valid, n_rows))

    def pallas(xq, xb, xb_valid, n_rows, interpret):
        return knn_hamming_pallas(xq, xb, k, xb_valid=_with_row_count(xb, xb_valid, n_rows),
                                  interpret=interpret)

    return choose("hamming", backend, xla, pallas, xq_codes, xb_codes, xb_valid, n_rows)


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


# ------------------------------------------------------------------- public brute force
@functools.partial(jax.jit, static_argnames=("k", "metric", "p", "backend"))
def _knn_jit(xq, xb, k, metric, p, backend="auto"):
    if metric == "cosine":
        xq, xb = normalize_L2(xq), normalize_L2(xb)
    return knn_search(xq, xb, k, metric, p, backend=backend)


def knn(xq, xb, k: int, metric: str = "l2", p: float = 2.0, *, backend: str | None = None):
    """Exact brute-force k-NN of xq among xb under any metric (FAISS `knn`).

    Streams xb in tiles: memory stays bounded for any database size.
    Returns (distances (nq, k) float32, indices (nq, k) int32). backend: "auto" | "xla" |
    "pallas", see `jann.ops.dispatch` (l2 / ip / cosine have a Pallas kernel).
    """
    xq, xb = check_pair(xq, xb)
    return _knn_jit(xq, xb, check_k(k), canonical_metric(metric), float(p),
                    resolve_backend(backend))
