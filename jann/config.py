"""Process-wide settings: which backend runs the scans when a call names none.

    jann.config.set_backend("pallas")        # every later search, knn, serve: the kernels
    with jann.config.backend("xla"): ...      # for a block of code
    JANN_BACKEND=pallas python app.py         # the same from the environment

`backend="auto" | "xla" | "pallas"` on a call (`jann.search`, `jann.range_search`,
`jann.knn`, sharded indexes, `jann serve --backend`) overrides the default; see
`jann.ops.dispatch` for what each means. The default is read when a program is traced,
so it selects a compiled program like any other static search parameter: changing it
does not change programs already compiled inside a user's own `jax.jit`.
"""

from __future__ import annotations

import contextlib

from jann.ops.dispatch import BACKENDS, default_backend, set_default_backend

__all__ = ["BACKENDS", "backend", "get_backend", "set_backend"]


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
