"""Exact Hamming k-NN on XLA: the database codes streamed in tiles with a running top-k,
as `knn.xla.knn_scan` does, so the (nq, N) distance matrix is never materialised."""

from __future__ import annotations

import jax.numpy as jnp

from ..knn.xla import streamed_top_k
from .reference import MISSING_DISTANCE, as_words, popcount_distances

__all__ = ["HAMMING_QUERY_BLOCK", "HAMMING_TILE", "knn_hamming_scan"]

# Tile sizes: a (query_block, tile) block of popcounts over W words; 256 x 2048 int32 is
# 2 MiB per word, which XLA fuses into one loop (the xor / popcount / sum never lands in
# memory as a 3-D array).
HAMMING_TILE = 2048
HAMMING_QUERY_BLOCK = 256


def knn_hamming_scan(xq_codes, xb_codes, k: int, *, xb_valid=None, tile: int | None = None,
                     query_block: int | None = None):
    """Traceable core of `knn_hamming` (no validation): (distances int32, rows int32)."""
    q_words, b_words = as_words(xq_codes), as_words(xb_codes)
    n = b_words.shape[0]
    tile = tile or min(HAMMING_TILE, max(n, 1))
    query_block = query_block or HAMMING_QUERY_BLOCK
    # float32 holds every distance up to 2**24 bits exactly.
    values, rows = streamed_top_k(
        q_words, b_words, k, tile, query_block,
        lambda q, b_tile: popcount_distances(q, b_tile).astype(jnp.float32),
        base_valid=xb_valid)
    missing = jnp.isinf(values)
    distances = jnp.where(missing, MISSING_DISTANCE, values.astype(jnp.int32))
    return distances.astype(jnp.int32), jnp.where(missing, -1, rows)
