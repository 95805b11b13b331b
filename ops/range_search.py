"""Exact range search (all rows within a radius) streamed over database tiles.

Results go into a fixed (nq, capacity) buffer so the scan is jittable; each query's true
count is kept even past the capacity, so a caller outside jit knows the exact size to
retry with (one retry at most), and a caller inside jit gets an overflow flag instead of
silently truncated results. Matches are stored in database order, as FAISS does.
"""

from __future__ import annotations

import jax.numpy as jnp

from .distances import is_similarity, pairwise_scores
from .knn.xla import map_query_blocks, plan_tiles, scan_tiles
from .sorting import prefix_sum

__all__ = ["range_scan"]


def range_scan(xq, xb, radius, capacity: int, metric: str, p: float = 2.0, *,
               xb_sqnorms=None, xb_valid=None):
    """Rows of xb within `radius` of each query (distance < radius, or similarity >
    radius, FAISS's strict comparisons); traceable, no validation.

    Returns counts (nq,) int32 (true totals, may exceed capacity), distances
    (nq, capacity) float32 and row positions (nq, capacity) int32 (-1 past the count).
    """
    nq, d = xq.shape
    similarity = is_similarity(metric)
    tile, query_block = plan_tiles(xb.shape[0], d, metric)
    radius = jnp.asarray(radius, jnp.float32)
    fill = -jnp.inf if similarity else jnp.inf

    def search_block(q):
        nb = q.shape[0]
        rows_idx = jnp.arange(nb)[:, None]

        def step(carry, start, fresh, x_tile, norm_tile, valid_tile):
            counts, dist, ids = carry
            scores = pairwise_scores(q, x_tile, metric, p, y_sqnorms=norm_tile)
            hit = scores > radius if similarity else scores < radius
            for mask in (valid_tile, fresh):
                if mask is not None:
                    hit &= mask[None, :]
            slot = counts[:, None] + prefix_sum(hit, axis=1, dtype=jnp.int32) - 1
            slot = jnp.where(hit, slot, capacity)  # out of range: dropped
            cols = jnp.arange(x_tile.shape[0], dtype=jnp.int32)[None, :] + start
            dist = dist.at[rows_idx, slot].set(scores, mode="drop")
            ids = ids.at[rows_idx, slot].set(jnp.broadcast_to(cols, hit.shape), mode="drop")
            return counts + jnp.sum(hit, axis=1, dtype=jnp.int32), dist, ids

        init = (jnp.zeros((nb,), jnp.int32), jnp.full((nb, capacity), fill, jnp.float32),
                jnp.full((nb, capacity), -1, jnp.int32))
        return scan_tiles(step, init, (xb, xb_sqnorms, xb_valid), tile)

    return map_query_blocks(search_block, xq, query_block)
