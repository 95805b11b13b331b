"""The scan of a flat-coded index ("SQ8", "PQ16", "RQ8x8": one list, no residual) for
batches of queries: Flat's tiled brute force over decoded tiles.

The list-major scan serves one list to one group of queries at a time, walking the
list's row chunks one after another for every group; the gathered scan decodes every row
once per query. Here the rows are cut into tiles (`jann.ops.knn.running_top_k`, the loop
of exact search); each tile is decoded once and scored for a block of queries by one
matmul, its keys merged into the queries' running top-k. Decoding costs O(rows x d) per
call whatever the batch, the scoring is BLAS work.
"""

from __future__ import annotations

import jax.numpy as jnp

from jann.ops import distances as dist_ops
from jann.ops.knn import map_query_blocks, plan_tiles, running_top_k

__all__ = ["scan_one_list", "scans_one_list"]

# Tiled brute force from this many queries on (see `scans_one_list`).
MIN_TILED_QUERIES = 2
# Queries per call of the tiled scan: a padded batch (10000 queries padded to 16384)
# skips its blocks past the real rows; each block decodes the rows once.
QUERY_BLOCK = 2048


def scans_one_list(index, nq: int) -> bool:
    """Whether a search of nq queries scans the rows as one tiled brute force: an index
    of one list without residual, and more than one query (a single query reads every
    row once either way; the gathered scan scores product codes by look-up tables)."""
    return index.nlist == 1 and not index.by_residual and nq >= MIN_TILED_QUERIES


def scan_one_list(index, q, k: int, selector=None, n_queries=None):
    """Top-k (distances, ids) of prepared queries q (nq, d) over all rows of the index,
    in blocks of QUERY_BLOCK queries; blocks past n_queries (traced: the real rows of a
    padded batch) are skipped."""
    return map_query_blocks(lambda b: _scan(index, b, k, selector), q, QUERY_BLOCK,
                            n_queries)


def _scan(index, q, k: int, selector):
    similarity = dist_ops.is_similarity(index.metric)
    nq = q.shape[0]
    if not index.capacity:
        return (jnp.full((nq, k), -jnp.inf if similarity else jnp.inf, jnp.float32),
                jnp.full((nq, k), -1, index.ids.dtype))
    valid = index.live() if selector is None else index.live() & selector(index.ids)
    l2 = index.metric == "l2"
    tile, query_block = plan_tiles(index.capacity, index.d, "l2" if l2 else "ip", k)
    # Keys are ||y||^2 - 2 q.y (l2; ||q||^2 is added to the k survivors) or -q.y.
    scaled_q = q * (-2.0 if l2 else -1.0)

    def decoded(codes, norms, valid_tile):
        return index.codec.decode(codes), norms, valid_tile

    def keyed_tile(q_block, rows, norms, valid_tile):
        bias = norms if l2 else jnp.zeros_like(norms)
        return dist_ops.dot(q_block, rows), jnp.where(valid_tile, bias, jnp.inf)

    keys, rows = running_top_k(scaled_q, (index.payload, index.norms, valid), tile,
                               query_block, k, keyed_tile, n_rows=index.count,
                               prepare_tile=decoded)
    found = rows >= 0
    if l2:
        values = jnp.maximum(keys + dist_ops.squared_norms(q)[:, None], 0.0)
    else:
        values = -keys
    fill = -jnp.inf if similarity else jnp.inf
    ids = jnp.where(found, index.ids[jnp.maximum(rows, 0)], -1)
    return jnp.where(found, values, fill), ids
