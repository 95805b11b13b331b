"""Process-wide settings: which backend runs the scans when a call names none, and how
many CPU cores jann's computations use.

    jann.config.set_backend("pallas")        # every later search, knn, serve: the kernels
    with jann.config.backend("xla"): ...      # for a block of code
    JANN_BACKEND=pallas python app.py         # the same from the environment
    jann.config.set_num_threads(4)            # faiss.omp_set_num_threads(4)

`backend="auto" | "xla" | "pallas"` on a call (`jann.search`, `jann.range_search`,
`jann.knn`, sharded indexes, `jann serve --backend`) overrides the default; see
`jann.ops.dispatch` for what each means. The default is read when a program is traced,
so it selects a compiled program like any other static search parameter: changing it
does not change programs already compiled inside a user's own `jax.jit`.
"""

from __future__ import annotations

import contextlib
import os

from jann.errors import InvalidInputError
from jann.ops.dispatch import BACKENDS, default_backend, set_default_backend

__all__ = ["BACKENDS", "backend", "get_backend", "get_num_threads", "set_backend",
           "set_num_threads"]


def set_backend(name: str | None) -> None:
    """Default backend of calls that name none; None goes back to JANN_BACKEND / "auto"."""
    set_default_backend(name)


def get_backend() -> str:
    return default_backend()


@contextlib.contextmanager
def backend(name: str):
    """The default backend set to `name` inside the block, restored after."""
    before = set_default_backend(name)
    try:
        yield
    finally:
        set_default_backend(before)


# The cores this process could use when jann was imported (its CPU affinity then).
_STARTING_CORES = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set()


def set_num_threads(n: int | None) -> None:
    """Run jann (XLA's CPU thread pools, and every other thread of this process) on n
    cores, as `faiss.omp_set_num_threads(n)` does for FAISS; None: every core the process
    started with. Takes effect at once, also for programs already compiled: the threads
    of this process, and those it starts later, are bound to the first n of its cores
    (Linux CPU affinity). XLA's pools keep their size, their threads share the n cores.

    Needs CPU affinity (Linux, Colab included); elsewhere it raises.
    """
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise InvalidInputError(f"the number of threads must be a positive int, got {n!r}")
    if not _STARTING_CORES:
        raise InvalidInputError("set_num_threads needs CPU affinity (Linux); elsewhere limit "
                                "the cores with your OS (e.g. taskset, start affinity)")
    cores = sorted(_STARTING_CORES)
    chosen = set(cores if n is None else cores[: min(n, len(cores))])
    for task in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(task), chosen)
        except (ProcessLookupError, PermissionError):  # a thread that just ended
            pass


def get_num_threads() -> int:
    """Cores jann's computations may use now."""
    if _STARTING_CORES:
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
