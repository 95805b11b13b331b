"""The backend switch of every op: `backend="auto" | "xla" | "pallas"`.

Each op of `jann.ops` that has a Pallas kernel is a folder with the same files:
`reference.py` (the pure-jnp oracle and the definitions every path shares), `xla.py`
(the XLA path), `pallas.py` (the kernel and its traceable wrapper) and `__init__.py`
(the public API and the op's choice, made by `choose` here): `knn.knn_search`,
`hamming.hamming_search`, `adc.adc_search` and `ivf_scan.ivf_search` (whose XLA path is
the IVF index's list-major scan, passed in by `jann.ivf.IVFIndex`). `jann.ops.dispatch`
re-exports them all.

- "xla": the XLA path, what every platform can run.
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

from .errors import InvalidInputError, UnsupportedBackendError

__all__ = [
    "BACKENDS",
    "MEASURED_FASTER",
    "MIN_COMPUTE_CAPABILITY",
    "check_backend",
    "choose",
    "default_backend",
    "kernels_supported",
    "resolve_backend",
    "set_default_backend",
]

BACKENDS = ("auto", "xla", "pallas")

# Kernels that "auto" runs as Pallas on CUDA: only those measured faster than their XLA
# path on a GPU (benchmarks/gpu_check.sh writes benchmarks/results/gpu_kernels.json),
# with the figures quoted here. No GPU measurement exists yet, so the set is empty and
# "auto" is XLA on every platform.
MEASURED_FASTER: frozenset[str] = frozenset()

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
