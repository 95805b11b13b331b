"""Exact k-nearest-neighbour search that streams the database in tiles.

The database is cut into tiles; for each block of queries a `lax.scan` walks the tiles,
computes one (query_block, tile) score matrix, selects its k best with the two-stage
selection of `topk.smallest_k`, and merges them into a running top-k. The (nq, N) matrix
is never materialised: peak extra memory is query_block * tile floats, whatever N is.

This is the XLA path every backend can run; `knn_reference` (full matrix, `lax.top_k`)
is its test oracle.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from .distances import (
    broadcast_rows, dot, canonical_metric, is_similarity, normalize_L2,
    pairwise_distances_reference, pairwise_scores, squared_norms)
from .errors import InvalidInputError
from .topk import check_k, merge_smallest, smallest_k

__all__ = ["knn", "knn_reference", "knn_scan", "plan_tiles", "running_top_k",
           "streamed_top_k"]

# Matmul metrics: (512, 4096) score blocks (8 MiB) measured fastest on Fashion-MNIST
# among tiles 2048-16384 x query blocks 512-2048 (2 cores; within ~8% of each other).
MATMUL_TILE = 4096
MATMUL_QUERY_BLOCK = 512
# Elementwise metrics hold a (query_block, tile, d) intermediate.
ELEMENTWISE_QUERY_BLOCK = 64


def plan_tiles(n: int, d: int, metric: str) -> tuple[int, int]:
    """(tile, query_block) for a database of n rows of dimension d."""
    if metric in ("l2", "ip", "cosine", "abs_ip"):
        tile, query_block = MATMUL_TILE, MATMUL_QUERY_BLOCK
    else:
        query_block = ELEMENTWISE_QUERY_BLOCK
        rows = broadcast_rows(query_block, d)
        tile = 1 << max(3, rows.bit_length() - 1)
    tile = min(tile, max(n, 1))
    return tile, query_block


def _pad_rows(x, n_to, value=0):
    n = x.shape[0]
    if n == n_to:
        return x
    return jnp.pad(x, [(0, n_to - n)] + [(0, 0)] * (x.ndim - 1), constant_values=value)


def tiled(xb, xb_sqnorms, xb_valid, tile):
    """The database as (n_tiles, tile, ...) stacks, padded rows marked invalid."""
    n = xb.shape[0]
    n_tiles = max(1, -(-n // tile))
    n_pad = n_tiles * tile
    if xb_valid is None and n_pad != n:
        xb_valid = jnp.ones((n,), bool)
    xb = _pad_rows(xb, n_pad).reshape(n_tiles, tile, -1)
    norms = None if xb_sqnorms is None else _pad_rows(xb_sqnorms, n_pad).reshape(n_tiles, tile)
    valid = None if xb_valid is None else _pad_rows(xb_valid, n_pad, False).reshape(n_tiles, tile)
    return xb, norms, valid


def map_query_blocks(fn, xq, query_block):
    """fn over row blocks of xq (an array, or a pytree of arrays with the same rows),
    results stacked in row order.

    Blocks are sliced from xq in place (the last one shifted back to end at the last row,
    recomputing a few rows) rather than padding xq to whole blocks, which would copy it:
    k-means assigns 1M x 128 training points this way, and a padded copy was 512 MB.
    """
    leaves = jax.tree.leaves(xq)
    nq = leaves[0].shape[0]
    if nq <= query_block:
        return fn(xq)
    n_blocks = -(-nq // query_block)
    shapes = jax.eval_shape(fn, jax.tree.map(
        lambda a: jax.ShapeDtypeStruct((query_block,) + a.shape[1:], a.dtype), xq))
    out = jax.tree.map(lambda s: jnp.zeros((nq,) + s.shape[1:], s.dtype), shapes)

    def body(i, out):
        start = jnp.minimum(i * query_block, nq - query_block)
        block = jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, start, query_block), xq)
        return jax.tree.map(lambda o, r: jax.lax.dynamic_update_slice_in_dim(o, r, start, 0),
                            out, fn(block))

    return jax.lax.fori_loop(0, n_blocks, body, out)


def running_top_k(q, tile_stacks, tile: int, k: int, keyed_tile):
    """Scan database tiles keeping each query's k smallest keys: the streaming loop shared
    by every exact search. `keyed_tile(q, *one_tile)` gives the (nq, tile) keys of one
    tile (+inf for rows that may not be returned), or (scores, bias): keys scores + bias
    with bias (tile,), left unsummed for `smallest_k` to fuse. Returns (keys, rows)
    (nq, k), ascending, +inf / -1 past the rows that exist."""
    take = min(k, tile)
    n_tiles = next(t for t in tile_stacks if t is not None).shape[0]

    def step(carry, inputs):
        start, *one_tile = inputs
        keyed = keyed_tile(q, *one_tile)
        scores, bias = keyed if isinstance(keyed, tuple) else (keyed, None)
        values, cols = smallest_k(scores, take, bias)
        return merge_smallest(*carry, values, cols + start, k), None

    init = (jnp.full((q.shape[0], k), jnp.inf, jnp.float32),
            jnp.full((q.shape[0], k), -1, jnp.int32))
    starts = jnp.arange(n_tiles, dtype=jnp.int32) * tile
    (values, rows), _ = jax.lax.scan(step, init, (starts, *tile_stacks))
    return values, rows


def streamed_top_k(q, base, k: int, tile: int, query_block: int, keys_of_tile, *,
                   base_valid=None):
    """Each row of q's k smallest keys over the rows of base, streamed: `running_top_k`
    over tiles of base for each block of queries. `keys_of_tile(q_block, base_tile)`
    gives the (query_block, tile) keys (NaN-free); rows outside base_valid (N,) never
    come back. For searches with no per-tile data beyond base (Hamming codes, PQ codes).
    Returns (keys, rows) (nq, k), ascending, +inf / -1 where fewer than k rows qualify."""
    base_tiles, _, valid_tiles = tiled(base, None, base_valid, tile)

    def keyed_tile(q_block, base_tile, valid_tile):
        keys = keys_of_tile(q_block, base_tile)
        if valid_tile is None:
            return keys
        return keys, jnp.where(valid_tile, 0.0, jnp.inf)

    def search_block(q_block):
        return running_top_k(q_block, (base_tiles, valid_tiles), tile, k, keyed_tile)

    return map_query_blocks(search_block, q, query_block)


def knn_scan(xq, xb, k: int, metric: str, p: float = 2.0, *, xb_sqnorms=None,
             xb_valid=None, tile: int | None = None, query_block: int | None = None):
    """k best rows of xb for each row of xq; traceable, no validation.

    metric must be canonical (cosine inputs already normalised). xb_sqnorms: cached
    squared norms for l2. xb_valid: (N,) bool, rows that may be returned (the rest are
    skipped: empty slots, filtered ids). Returns distances (nq, k) float32 and row
    positions (nq, k) int32, -1 / +inf (-inf for similarities) where fewer than k rows
    qualify.
    """
    nq, d = xq.shape
    similarity = is_similarity(metric)
    auto_tile, auto_block = plan_tiles(xb.shape[0], d, metric)
    tile = tile or auto_tile
    query_block = query_block or auto_block
    tiles, norm_tiles, valid_tiles = tiled(xb, xb_sqnorms, xb_valid, tile)

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

    def search_block(q):
        return running_top_k(q, (tiles, norm_tiles, valid_tiles), tile, k, keyed_tile)

    values, rows = map_query_blocks(search_block, xq, query_block)
    rows = jnp.where(jnp.isinf(values) & (values > 0), -1, rows)
    if metric == "l2":  # the per-query constant _dot_keyed left out
        values = jnp.maximum(values + squared_norms(xq)[:, None], 0.0)
    return (-values if similarity else values), rows


# Metrics ranked by one matmul plus a per-row bias: the inner loop then makes a single
# elementwise pass over the (query_block, tile) block instead of four (norms, clamp, NaN,
# validity), which measured ~15% of the Flat search time on Fashion-MNIST.
_RANK_BY_DOT = frozenset({"l2", "ip", "cosine"})
# Keys are ||x||^2 - 2 q.x (l2) or -q.x: the factor goes on the queries, once per query
# block, not on every score; powers of two scale exactly, so the keys are unchanged.
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


def _check_pair(xq, xb):
    xq, xb = jnp.asarray(xq), jnp.asarray(xb)
    if xq.ndim != 2 or xb.ndim != 2 or xq.shape[1] != xb.shape[1]:
        raise InvalidInputError(
            f"knn needs 2-D xq and xb with the same dimension, got {xq.shape} and {xb.shape}")
    return xq, xb


@functools.partial(jax.jit, static_argnames=("k", "metric", "p", "backend"))
def _knn_jit(xq, xb, k, metric, p, backend="auto"):
    if metric == "cosine":
        xq, xb = normalize_L2(xq), normalize_L2(xb)
    # --- backend dispatch hook (ops/dispatch.py; imported here: it imports this module)
    from .dispatch import knn_search
    return knn_search(xq, xb, k, metric, p, backend=backend)


def knn(xq, xb, k: int, metric: str = "l2", p: float = 2.0, *, backend: str = "auto"):
    """Exact brute-force k-NN of xq among xb under any metric (FAISS `knn`).

    Streams xb in tiles: memory stays bounded for any database size.
    Returns (distances (nq, k) float32, indices (nq, k) int32). backend: "auto" | "xla" |
    "pallas", see `jann.ops.dispatch` (l2 / ip / cosine have a Pallas kernel).
    """
    from .dispatch import check_backend
    xq, xb = _check_pair(xq, xb)
    return _knn_jit(xq, xb, check_k(k), canonical_metric(metric), float(p),
                    check_backend(backend))


@functools.partial(jax.jit, static_argnames=("k", "metric", "p"))
def _knn_reference_jit(xq, xb, k, metric, p):
    scores = pairwise_distances_reference(xq, xb, metric, p)
    keyed = -scores if is_similarity(metric) else scores
    keyed = jnp.where(jnp.isnan(keyed), jnp.inf, keyed)
    take = min(k, xb.shape[0])
    values, idx = jax.lax.top_k(-keyed, take)
    values = -values
    idx = jnp.where(jnp.isinf(values) & (values > 0), -1, idx)
    values = jnp.pad(values, ((0, 0), (0, k - take)), constant_values=jnp.inf)
    idx = jnp.pad(idx, ((0, 0), (0, k - take)), constant_values=-1)
    return (-values if is_similarity(metric) else values), idx


def knn_reference(xq, xb, k: int, metric: str = "l2", p: float = 2.0):
    """Oracle for `knn`: the whole score matrix, then `lax.top_k`."""
    xq, xb = _check_pair(xq, xb)
    return _knn_reference_jit(xq, xb, check_k(k), canonical_metric(metric), float(p))
