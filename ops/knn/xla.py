"""Exact k-nearest-neighbour search that streams the database in tiles.

The database is cut into tiles; a `lax.scan` walks the tiles and, for each block of
queries, computes one (query_block, tile) score matrix and merges its entries into the
block's running top-k (`topk.merge_smallest_blocks`: only blocks of scores that beat a
query's current k-th value are looked at). The (nq, N) matrix is never materialised:
peak extra memory is query_block * tile floats, whatever N is.

This is the XLA path every backend can run; `knn.reference.knn_reference` (full matrix,
`lax.top_k`) is its test oracle. The streaming loops here (`scan_tiles`,
`running_top_k`, `streamed_top_k`, `map_query_blocks`) also carry the XLA paths of the
other scans (`hamming`, `adc`, `range_search`, `projection`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ..distances import broadcast_rows, dot, is_similarity, pairwise_scores, squared_norms
from ..topk.xla import (
    blockwise_merge_applies, blockwise_merge_length, merge_smallest, merge_smallest_blocks,
    smallest_k)

__all__ = ["knn_scan", "map_query_blocks", "plan_tiles", "running_top_k", "scan_tiles",
           "streamed_top_k", "with_row_count"]

# Matmul metrics: (512, 4096) score blocks (8 MiB) measured fastest on Fashion-MNIST
# among tiles 2048-16384 x query blocks 512-2048 (2 cores; within ~8% of each other).
MATMUL_TILE = 4096
MATMUL_QUERY_BLOCK = 512
# Larger k widens the tile until the blockwise merge applies (`blockwise_merge_applies`:
# 4k blocks of 32 per tile), with fewer queries per block past 32 MiB of scores. A graph
# build's k = 65 search of 60000 rows spent half its time in a full top_k per 4096-row
# tile; (512, 16384) tiles measured 4.6 -> 3.1 s for 4096 queries (k = 129: (256, 32768)
# 3.5 s).
MAX_MATMUL_TILE = 1 << 15
SCORE_BLOCK_FLOATS = 1 << 23
# Elementwise metrics hold a (query_block, tile, d) intermediate.
ELEMENTWISE_QUERY_BLOCK = 64


def plan_tiles(n: int, d: int, metric: str, k: int = 1) -> tuple[int, int]:
    """(tile, query_block) for a k-best search of a database of n rows of dimension d."""
    if metric in ("l2", "ip", "cosine", "abs_ip"):
        tile, query_block = MATMUL_TILE, MATMUL_QUERY_BLOCK
        while tile < min(blockwise_merge_length(k), MAX_MATMUL_TILE, n):
            tile = 2 * tile
        query_block = min(query_block, max(SCORE_BLOCK_FLOATS // tile, 64))
    else:
        query_block = ELEMENTWISE_QUERY_BLOCK
        rows = broadcast_rows(query_block, d)
        tile = 1 << max(3, rows.bit_length() - 1)
    tile = min(tile, max(n, 1))
    return tile, query_block


def scan_tiles(step, carry, row_arrays, tile: int, n_rows=None):
    """Walk the rows of `row_arrays` (arrays with the same leading length N, or None) one
    tile at a time: carry = step(carry, start, fresh, *tiles), where tiles are the rows
    [start, start + tile) of each array and fresh is the (tile,) bool mask of rows this
    tile contributes (None when it contributes all of them).

    The last tile ends at row N, overlapping its predecessor, instead of padding a copy of
    the database to whole tiles (on Fashion-MNIST that copy was 4% of a Flat search); the
    rows it re-reads are not fresh. n_rows: traced count of leading rows that exist; rows
    past it are not fresh and tiles that start past it are not computed (an index with
    capacity 65536 holding 60000 rows skips its last tile).
    """
    n = next(a for a in row_arrays if a is not None).shape[0]
    if n == 0:
        return carry
    tile = min(tile, n)
    ragged = n % tile != 0

    def body(carry, i):
        begin = i * tile
        start = jnp.minimum(begin, n - tile)

        def compute(carry):
            tiles = [None if a is None else jax.lax.dynamic_slice_in_dim(a, start, tile)
                     for a in row_arrays]
            fresh = None
            if ragged or n_rows is not None:
                rows = start + jnp.arange(tile, dtype=jnp.int32)
                fresh = rows >= begin if ragged else jnp.ones((tile,), bool)
                if n_rows is not None:
                    fresh &= rows < n_rows
            return step(carry, start, fresh, *tiles)

        if n_rows is None:
            return compute(carry), None
        return jax.lax.cond(begin < n_rows, compute, lambda c: c, carry), None

    carry, _ = jax.lax.scan(body, carry, jnp.arange(-(-n // tile), dtype=jnp.int32))
    return carry


def map_query_blocks(fn, xq, query_block, n_rows=None):
    """fn over row blocks of xq (an array, or a pytree of arrays with the same rows),
    results stacked in row order.

    Blocks are sliced from xq in place (the last one shifted back to end at the last row,
    recomputing a few rows) rather than padding xq to whole blocks, which would copy it:
    k-means assigns 1M x 128 training points this way, and a padded copy was 512 MB.
    n_rows: traced count of leading rows that matter (a padded query batch); blocks past
    it are not computed and their rows of the result are zeros.
    """
    leaves = jax.tree.leaves(xq)
    nq = leaves[0].shape[0]
    if nq <= query_block:
        return fn(xq)
    n_blocks = -(-nq // query_block)
    if n_rows is not None:
        n_blocks = jnp.minimum(n_blocks, (n_rows + query_block - 1) // query_block)
    shapes = jax.eval_shape(fn, jax.tree.map(
        lambda a: jax.ShapeDtypeStruct((query_block,) + a.shape[1:], a.dtype), xq))
    out = jax.tree.map(lambda s: jnp.zeros((nq,) + s.shape[1:], s.dtype), shapes)

    def body(i, out):
        start = jnp.minimum(i * query_block, nq - query_block)
        block = jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, start, query_block), xq)
        return jax.tree.map(lambda o, r: jax.lax.dynamic_update_slice_in_dim(o, r, start, 0),
                            out, fn(block))

    return jax.lax.fori_loop(0, n_blocks, body, out)


def running_top_k(q, row_arrays, tile: int, query_block: int, k: int, keyed_tile, *,
                  n_rows=None, prepare_tile=None):
    """Each query's k smallest keys over the database rows: the streaming loop shared by
    every exact search.

    Database tiles are the outer loop (`scan_tiles`) and query blocks the inner one, so a
    tile is sliced (a copy) once per call rather than once per query block. q: the queries
    (nq, ...) or a pytree of arrays with nq rows; row_arrays: per-row database arrays (N,
    ...) or None. `keyed_tile(q_block, *tiles)` gives the (query_block, tile) keys of one
    tile (+inf for rows that may not be returned, NaN-free), or (scores, bias): keys
    scores + bias with bias (tile,), left unsummed so the selection fuses it.
    prepare_tile(*tiles) -> tiles, if given, runs once per tile before its query blocks
    (decoding a tile of codes once for every query). Returns (keys, rows) (nq, k),
    ascending, +inf / -1 where fewer than k rows qualify.
    """
    nq = jax.tree.leaves(q)[0].shape[0]
    n = next(a for a in row_arrays if a is not None).shape[0]
    init = (jnp.full((nq, k), jnp.inf, jnp.float32), jnp.full((nq, k), -1, jnp.int32))
    if nq == 0 or n == 0:
        return init
    tile, block = min(tile, n), min(query_block, nq)
    n_blocks = -(-nq // block)

    if blockwise_merge_applies(k, tile):
        merge = merge_smallest_blocks
    else:
        def merge(values, rows, scores, bias, start):
            best, cols = smallest_k(scores, min(k, tile), bias)
            return merge_smallest(values, rows, best, cols + start, k)

    def tile_step(carry, start, fresh, *tiles):
        if prepare_tile is not None:
            tiles = prepare_tile(*tiles)

        def block_step(j, carry):
            # The last block ends at row nq, overlapping its predecessor, whose rows keep
            # what they had (merging a tile twice would duplicate its entries).
            first = jnp.minimum(j * block, nq - block)
            q_block = jax.tree.map(
                lambda a: jax.lax.dynamic_slice_in_dim(a, first, block), q)
            old = [jax.lax.dynamic_slice_in_dim(a, first, block) for a in carry]
            keyed = keyed_tile(q_block, *tiles)
            scores, bias = keyed if isinstance(keyed, tuple) else (keyed, None)
            if bias is None:
                bias = jnp.zeros((scores.shape[1],), scores.dtype)
            if fresh is not None:
                bias = jnp.where(fresh, bias, jnp.inf)
            new = merge(*old, scores, bias, start)
            if nq % block:
                kept = first + jnp.arange(block) < j * block
                new = [jnp.where(kept[:, None], o, m) for o, m in zip(old, new)]
            return tuple(jax.lax.dynamic_update_slice_in_dim(a, m, first, 0)
                         for a, m in zip(carry, new))

        return jax.lax.fori_loop(0, n_blocks, block_step, carry)

    return scan_tiles(tile_step, init, row_arrays, tile, n_rows)


def streamed_top_k(q, base, k: int, tile: int, query_block: int, keys_of_tile, *,
                   base_valid=None):
    """Each row of q's k smallest keys over the rows of base, streamed (`running_top_k`).
    `keys_of_tile(q_block, base_tile)` gives the (query_block, tile) keys (NaN-free); rows
    outside base_valid (N,) never come back. For searches with no per-tile data beyond
    base (Hamming codes, PQ codes). Returns (keys, rows) (nq, k), ascending, +inf / -1
    where fewer than k rows qualify."""
    def keyed_tile(q_block, base_tile, valid_tile):
        keys = keys_of_tile(q_block, base_tile)
        if valid_tile is None:
            return keys
        return keys, jnp.where(valid_tile, 0.0, jnp.inf)

    return running_top_k(q, (base, base_valid), tile, query_block, k, keyed_tile)


def knn_scan(xq, xb, k: int, metric: str, p: float = 2.0, *, xb_sqnorms=None,
             xb_valid=None, n_rows=None, tile: int | None = None,
             query_block: int | None = None):
    """k best rows of xb for each row of xq; traceable, no validation.

    metric must be canonical (cosine inputs already normalised). xb_sqnorms: cached
    squared norms for l2. xb_valid: (N,) bool, rows that may be returned (the rest are
    skipped: empty slots, filtered ids). n_rows: traced count of leading rows of xb that
    exist (the rest are skipped, and their tiles not computed). Returns distances
    (nq, k) float32 and row positions (nq, k) int32, -1 / +inf (-inf for similarities)
    where fewer than k rows qualify.

    Distances are differentiable with respect to xq and xb (rows are not): the selection
    loops are not, so the derivative is that of the metric at the rows found.
    """
    auto_tile, auto_block = plan_tiles(xb.shape[0], xq.shape[1], metric, k)
    return _knn_scan(xq, xb, xb_sqnorms, xb_valid, n_rows, k, metric, float(p),
                     tile or auto_tile, query_block or auto_block)


@functools.partial(jax.custom_jvp, nondiff_argnums=(5, 6, 7, 8, 9))
def _knn_scan(xq, xb, xb_sqnorms, xb_valid, n_rows, k, metric, p, tile, query_block):
    similarity = is_similarity(metric)

    def keyed_tile(q, x_tile, norm_tile, valid_tile):
        if metric in _RANK_BY_DOT:
            return _dot_keyed(q * _DOT_KEY_SCALE[metric], x_tile, norm_tile, valid_tile,
                              metric)
        scores = pairwise_scores(q, x_tile, metric, p, y_sqnorms=norm_tile)
        keyed = -scores if similarity else scores
        keyed = jnp.where(jnp.isnan(keyed), jnp.inf, keyed)
        if valid_tile is not None:
            keyed = jnp.where(valid_tile[None, :], keyed, jnp.inf)
        return keyed

    values, rows = running_top_k(xq, (xb, xb_sqnorms, xb_valid), tile, query_block, k,
                                 keyed_tile, n_rows=n_rows)
    rows = jnp.where(jnp.isinf(values) & (values > 0), -1, rows)
    if metric == "l2":  # the per-query constant _dot_keyed left out
        values = jnp.maximum(values + squared_norms(xq)[:, None], 0.0)
    return (-values if similarity else values), rows


@_knn_scan.defjvp
def _knn_scan_jvp(k, metric, p, tile, query_block, primals, tangents):
    xq, xb = primals[:2]
    values, rows = _knn_scan(*primals, k, metric, p, tile, query_block)
    found = rows >= 0
    safe_rows = jnp.where(found, rows, 0)

    def distances_at_rows(xq, xb):
        return jax.vmap(lambda q, nbrs: pairwise_scores(q[None], nbrs, metric, p)[0])(
            xq, xb[safe_rows])

    _, d_values = jax.jvp(distances_at_rows, (xq, xb), tuple(tangents[:2]))
    return (values, rows), (jnp.where(found, d_values, 0.0),
                            np.zeros(rows.shape, jax.dtypes.float0))


# Metrics ranked by one matmul plus a per-row bias: the inner loop then makes a single
# elementwise pass over the (query_block, tile) block instead of four (norms, clamp, NaN,
# validity), which measured ~15% of the Flat search time on Fashion-MNIST.
_RANK_BY_DOT = frozenset({"l2", "ip", "cosine"})
# Keys are ||x||^2 - 2 q.x (l2) or -q.x: the factor goes on each block of queries, not
# on every score (nor on a whole copy of the queries: k-means passes 1M points); powers
# of two scale exactly, so the keys are unchanged.
_DOT_KEY_SCALE = {"l2": -2.0, "ip": -1.0, "cosine": -1.0}


def _dot_keyed(scaled_q, x_tile, norm_tile, valid_tile, metric):
    """Smaller-is-better keys as (scores, bias) from one matmul of the pre-scaled queries:
    bias ||x||^2 for l2 (||q||^2, the same for the whole row, is added to the k survivors
    only), 0 for inner products; rows that may not be returned get +inf bias."""
    dots = dot(scaled_q, x_tile)
    if metric == "l2":
        bias = squared_norms(x_tile) if norm_tile is None else norm_tile
    else:
        bias = jnp.zeros((x_tile.shape[0],), jnp.float32)
    if valid_tile is not None:
        bias = jnp.where(valid_tile, bias, jnp.inf)
    return dots, bias


def with_row_count(xb, xb_valid, n_rows):
    """xb_valid (N,) bool or None, restricted to the first n_rows (traced) rows of xb: the
    Pallas kernels take the existing rows as part of their row mask."""
    if n_rows is None:
        return xb_valid
    exists = jnp.arange(xb.shape[0], dtype=jnp.int32) < n_rows
    return exists if xb_valid is None else xb_valid & exists
