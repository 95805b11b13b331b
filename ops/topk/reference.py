"""k-selection by `lax.top_k`: exact, and a full sort of each row.

The oracle of the two-stage selection (`topk.xla.smallest_k`), and its final stage: once
the candidates are cut down to a few blocks per row, sorting them is cheap. Ties keep the
lower column first.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["top_k_smallest"]


def top_k_smallest(x: jax.Array, k: int):
    """The k smallest values of each row of x (..., n) and their int32 columns, ascending
    (k <= n; NaN must already be mapped to +inf)."""
    values, idx = jax.lax.top_k(-x, k)
    return -values, idx.astype(jnp.int32)
