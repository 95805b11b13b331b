"""k-selection on XLA: the k smallest entries of each row, for any k.

`lax.top_k` sorts, which on CPU costs about half as much as the matmul that produced the
distances (0.25 s against 0.51 s on a (2000, 60000) matrix). `smallest_k` uses an exact
two-stage selection instead: cut each row into blocks, keep the k blocks with the smallest
minima (they must hold the true k smallest entries), and run `top_k` on those k * block
entries only (`topk.reference.top_k_smallest`, also the oracle). Ties keep the lower
column first, as `lax.top_k` does.

Conventions (FAISS's): asking for more entries than a row has pads the result with
+inf (smallest) / -inf (largest) and index -1; NaN entries are never selected. The
validated public functions (`kmin`, `kmax`, `merge_knn_results`) are in `jann.ops.topk`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..errors import InvalidInputError
from .reference import top_k_smallest

__all__ = ["smallest_k", "smallest_k_gathered", "smallest_k_padded", "merge_smallest", "merge_smallest_blocks",
           "blockwise_merge_applies", "blockwise_merge_length"]

# Block width of the two-stage selection; rows shorter than 4 blocks per wanted entry go
# straight to top_k, where the first stage would not pay.
_BLOCK = 32
# `merge_smallest_blocks` gathers k blocks per round; past this many rounds (the first
# tiles of a scan, when most blocks still beat the running k-th value) one selection of
# the k best blocks is cheaper.
_MAX_ROUNDS = 2


def smallest_k(x: jax.Array, k: int, bias: jax.Array | None = None):
    """The k smallest values of each row of x (..., n) and their columns, ascending.

    bias: optional (n,) added to every row first. Passing it rather than x + bias lets
    each pass fuse the addition instead of writing the sum out: one read of x instead of
    a write and two reads (the exact searches' score blocks are 8 MiB).
    Requires k <= n; NaN must already be replaced (callers map it to +inf).
    """
    n = x.shape[-1]
    n_blocks = n // _BLOCK
    if k > n:
        raise InvalidInputError(f"smallest_k: k={k} > n={n}")
    if bias is None:
        bias = jnp.zeros((n,), x.dtype)
    if k == 1:  # a plain reduction beats any selection (k-means assignment, IVF probes)
        col = _argmin(x + bias)[..., None]
        return jnp.take_along_axis(x, col, axis=-1) + bias[col], col
    if n_blocks < 4 * k or n % _BLOCK:
        return top_k_smallest(x + bias, k)
    blocks = x.reshape(*x.shape[:-1], n_blocks, _BLOCK)
    bias_blocks = bias.reshape(n_blocks, _BLOCK)
    _, best_blocks = top_k_smallest(jnp.min(blocks + bias_blocks, axis=-1), k)
    best_blocks = jnp.sort(best_blocks, axis=-1)  # keeps ties in column order
    cand = jnp.take_along_axis(blocks, best_blocks[..., None], axis=-2) + bias_blocks[best_blocks]
    values, pos = top_k_smallest(cand.reshape(*x.shape[:-1], k * _BLOCK), k)
    cols = jnp.take_along_axis(best_blocks, pos // _BLOCK, axis=-1) * _BLOCK + pos % _BLOCK
    return values, cols


def _argmin(x: jax.Array) -> jax.Array:
    """argmin along the last axis (first of equal minima) as int32. XLA's CPU argmin
    reduces (value, index) pairs element by element: 78 ms on a (16384, 2048) block, 6 ms
    for its plain min. Block minima (a plain min), the argmin of those, then of the one
    block took 13 ms (k-means assignment is one such block per 16384 points)."""
    n = x.shape[-1]
    if n % _BLOCK or n < 2 * _BLOCK:
        return jnp.argmin(x, axis=-1).astype(jnp.int32)
    blocks = x.reshape(*x.shape[:-1], n // _BLOCK, _BLOCK)
    best = jnp.argmin(jnp.min(blocks, axis=-1), axis=-1).astype(jnp.int32)
    inside = jnp.take_along_axis(blocks, best[..., None, None], axis=-2)[..., 0, :]
    return best * _BLOCK + jnp.argmin(inside, axis=-1).astype(jnp.int32)


def merge_smallest(values_a, idx_a, values_b, idx_b, k: int):
    """Merge two candidate lists per row into the k smallest (a wins ties)."""
    values = jnp.concatenate([values_a, values_b], axis=-1)
    idx = jnp.concatenate([idx_a, idx_b], axis=-1)
    best, pos = top_k_smallest(values, k)
    return best, jnp.take_along_axis(idx, pos, axis=-1)


def blockwise_merge_length(k: int) -> int:
    """The shortest rows `merge_smallest_blocks` takes for this k (a multiple of the
    block width)."""
    return 4 * k * _BLOCK


def blockwise_merge_applies(k: int, n: int) -> bool:
    """Whether `merge_smallest_blocks` takes rows of length n for this k (else merge the
    output of `smallest_k`)."""
    return k > 1 and n % _BLOCK == 0 and n // _BLOCK >= 4 * k


def merge_smallest_blocks(values, idx, x, bias, offset):
    """Merge the entries of x (..., n) + bias (n,) into a running top-k: the k smallest of
    (values, idx) (..., k, ascending) and of x, whose columns are numbered from offset.
    The running entries win ties, as with `merge_smallest` of `smallest_k`'s result.

    A scan over database tiles spends most of its selection time on tiles that change
    few of the running k entries. So x is cut into blocks; only blocks whose minimum beats
    the row's current k-th value can contribute, and those are gathered k blocks per round
    (in column order) and merged, instead of selecting among every block. When a row has
    more such blocks than a few rounds take (the first tiles), the k blocks with the
    smallest minima are gathered instead, as `smallest_k` does. Both are exact. NaN must
    already be mapped to +inf; requires `blockwise_merge_applies(k, n)`.
    """
    k, n = values.shape[-1], x.shape[-1]
    n_blocks = n // _BLOCK
    lead = x.shape[:-1]
    blocks = x.reshape(*lead, n_blocks, _BLOCK)
    bias_blocks = bias.reshape(n_blocks, _BLOCK)
    minima = jnp.min(blocks + bias_blocks, axis=-1)
    block_cols = jnp.arange(_BLOCK, dtype=jnp.int32)

    def merge_blocks(values, idx, picked, present):
        """Merge the blocks `picked` (..., m), ascending, where `present`."""
        m = picked.shape[-1]
        cand = (jnp.take_along_axis(blocks, picked[..., None], axis=-2)
                + bias_blocks[picked])
        cand = jnp.where(present[..., None], cand, jnp.inf).reshape(*lead, m * _BLOCK)
        cols = (picked[..., None] * _BLOCK + block_cols).reshape(*lead, m * _BLOCK) + offset
        return merge_smallest(values, idx, cand, cols, k)

    def best_blocks(values, idx):
        _, picked = top_k_smallest(minima, k)
        picked = jnp.sort(picked, axis=-1)  # column order keeps ties as top_k has them
        return merge_blocks(values, idx, picked, jnp.ones(picked.shape, bool))

    hit_numbers = jnp.arange(1, k + 1, dtype=jnp.int32)

    def next_round(state):
        values, idx, hits = state
        # (associative_scan: XLA's CPU cumsum is a reduce-window, 2.4x slower here)
        seen = jax.lax.associative_scan(jnp.add, hits.astype(jnp.int32), axis=-1)
        # The j-th hit (j <= k) is the first block that has seen j hits, n_blocks where a
        # row has fewer. A binary search per hit number: counting the blocks with fewer
        # than j hits instead is an (n_blocks, k) comparison, 27 of the 35 ms of a k = 65
        # merge of a (512, 16384) block (searchsorted: 1.5 ms).
        picked = jax.vmap(lambda row: jnp.searchsorted(row, hit_numbers, method="scan"))(
            seen.reshape(-1, n_blocks)).astype(jnp.int32).reshape(*lead, k)
        present = picked < n_blocks
        values, idx = merge_blocks(values, idx, jnp.minimum(picked, n_blocks - 1), present)
        return values, idx, hits & (seen > k) & (minima < values[..., -1:])

    def hit_blocks(values, idx):
        hits = minima < values[..., -1:]
        values, idx, _ = jax.lax.while_loop(lambda state: jnp.any(state[2]), next_round,
                                            (values, idx, hits))
        return values, idx

    most_hits = jnp.max(jnp.sum(minima < values[..., -1:], axis=-1, dtype=jnp.int32))
    return jax.lax.cond(most_hits > _MAX_ROUNDS * k, best_blocks, hit_blocks, values, idx)


def smallest_k_padded(keyed: jax.Array, k: int):
    """`smallest_k` for any k: columns past the row length, and +inf entries, come back
    as (+inf, -1). Traceable; NaN must already be mapped to +inf."""
    take = min(k, keyed.shape[-1])
    values, idx = smallest_k(keyed, take) if take > 0 else (
        keyed[..., :0], jnp.zeros(keyed.shape[:-1] + (0,), jnp.int32))
    idx = jnp.where(jnp.isinf(values) & (values > 0), -1, idx)
    if take < k:
        pad = [(0, 0)] * (keyed.ndim - 1) + [(0, k - take)]
        values = jnp.pad(values, pad, constant_values=jnp.inf)
        idx = jnp.pad(idx, pad, constant_values=-1)
    return values, idx


def smallest_k_gathered(table: jax.Array, rows: jax.Array, k: int):
    """`smallest_k_padded` of the rows table[rows[i, 0]] ++ table[rows[i, 1]] ++ ...
    (table (R, w), rows (n, m) int) without writing them out: columns index that
    concatenation (m * w wide). The two stages read the table in place: block minima
    of every table row, then the k best blocks of each gathered row. (The IVF scan's
    candidates are laid out by list; gathering them per query first cost as much as the
    selection: 18M entries, 21 ms.)"""
    n, m = rows.shape
    width = table.shape[1]
    n_blocks = width // _BLOCK
    if width % _BLOCK or k > m * n_blocks // 4:
        return smallest_k_padded(table[rows].reshape(n, m * width), k)
    blocks = table.reshape(table.shape[0], n_blocks, _BLOCK)
    minima = jnp.min(blocks, axis=-1)[rows].reshape(n, m * n_blocks)
    _, best = top_k_smallest(minima, k)
    best = jnp.sort(best, axis=-1)  # keeps ties in column order
    picked = jnp.take_along_axis(rows, best // n_blocks, axis=-1)
    cand = blocks[picked, best % n_blocks].reshape(n, k * _BLOCK)
    values, pos = top_k_smallest(cand, k)
    cols = jnp.take_along_axis(best, pos // _BLOCK, axis=-1) * _BLOCK + pos % _BLOCK
    return values, jnp.where(jnp.isinf(values) & (values > 0), -1, cols)
