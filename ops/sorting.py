"""`bucket_sort`: group the positions of small integer keys by key (FAISS `bucket_sort`).

Used to turn (query, list) pairs into list-major order for IVF scans. A stable argsort is
the whole algorithm; what this adds is FAISS's (lims, perm) layout, jit-compatible.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

__all__ = ["bucket_sort"]


@functools.partial(jax.jit, static_argnames=("nbucket",))
def bucket_sort(values, nbucket: int):
    """Stable grouping of positions by bucket.

    values: (n,) ints in [0, nbucket), or -1 for entries to ignore.
    Returns lims (nbucket + 1,) and perm (n,): the positions holding bucket b are
    perm[lims[b]:lims[b + 1]], in increasing order; ignored entries come last, after
    lims[nbucket].
    """
    values = jnp.asarray(values).astype(jnp.int32)
    keyed = jnp.where((values >= 0) & (values < nbucket), values, nbucket)
    perm = jnp.argsort(keyed, stable=True).astype(jnp.int32)
    counts = jnp.bincount(keyed, length=nbucket + 1)[:nbucket]
    lims = jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.cumsum(counts).astype(jnp.int32)])
    return lims, perm
