"""Running top-k for Pallas scan kernels, the host-side passes around them, and
`scan_call`, the launcher every scan kernel (`knn`, `hamming`, `adc`) shares.

Every scan kernel here has the same shape: a grid over query blocks; inside, a loop over
database tiles that computes a (block_q, block_n) block of keys (smaller is better, +inf
for rows that may not be returned) and folds it into a per-query buffer of the best
`k_pad` (key, row) pairs. The buffer lives in registers (Triton) for the whole scan, so the
(nq, N) key matrix never reaches memory.

Selection is repeated min + mask rather than a sort or argmin: Triton and Mosaic GPU
lower min/max reductions and `where`, and a tile rarely holds more than a few entries that
beat the buffer, so the loop stops after those (a `while_loop` on "any row improved").
Order is lexicographic on (key, row), which makes ties resolve to the lower row exactly
as `lax.top_k` does, and makes a threshold pass exact: for k above a kernel's `max_k`,
`multipass_top_k` runs the kernel again for the entries after the last one found, so
any k works at the cost of ceil(k / max_k) scans.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from ..errors import InvalidInputError

__all__ = [
    "ScanConfig",
    "finish",
    "fold_tile",
    "load_rows",
    "multipass_top_k",
    "next_pow2",
    "pad_rows_to",
    "scan_call",
    "scan_top_k",
]

_BIG_ROW = jnp.iinfo(jnp.int32).max


@dataclasses.dataclass(frozen=True)
class ScanConfig:
    """Static launch parameters of a scan kernel.

    block_q / block_n / block_d / max_k must be powers of two (Triton tensors are);
    block_q and block_d >= 16 where the kernel uses a matmul (Triton's dot needs 16 in
    every dimension). block_d is the slice of the vector dimension one step of the
    inner loop reads: a tile is (block_n, block_d), whatever d is, so registers and shared
    memory do not grow with d. max_k bounds the per-query buffer held in registers:
    block_q * max_k keys and rows. `jann.ops.plans` picks them from the shape
    (`plan_knn`, `plan_ivf`, ...) and says how they were sized.
    """

    block_q: int = 16
    block_n: int = 64
    block_d: int = 32
    max_k: int = 128
    num_warps: int = 4
    num_stages: int = 1

    def __post_init__(self):
        for name in ("block_q", "block_n", "block_d", "max_k"):
            value = getattr(self, name)
            if value <= 0 or value & (value - 1):
                raise InvalidInputError(
                    f"ScanConfig.{name} must be a power of two, got {value}")

    def compiler_params(self):
        from jax.experimental.pallas import triton as plgpu
        return plgpu.CompilerParams(num_warps=self.num_warps, num_stages=self.num_stages)


def next_pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def load_rows(ref, start, n_rows: int, in_range, cols=None, other=0):
    """ref[start : start + n_rows] (or its columns `cols`: one column index, static or
    traced, or a (start, width) tuple) as one contiguous masked load: rows where
    `in_range` is False and columns past the array's width read `other`. Contiguous (not
    a gather over clipped row indices), so Triton keeps one base address per thread
    instead of a pointer per element, which is what spilled registers before."""
    from jax.experimental.pallas import triton as plgpu
    if cols is None:
        return plgpu.load(ref.at[pl.ds(start, n_rows)], mask=in_range, other=other)
    if not isinstance(cols, tuple):  # (a Python int fails the interpreter's discharge)
        column = jnp.asarray(cols, jnp.int32)
        return plgpu.load(ref.at[pl.ds(start, n_rows), column], mask=in_range, other=other)
    col_start, width = cols
    col = col_start + jax.lax.broadcasted_iota(jnp.int32, (1, width), 1)
    mask = in_range[:, None] & (col < ref.shape[1])
    return plgpu.load(ref.at[pl.ds(start, n_rows), pl.ds(col_start, width)], mask=mask,
                      other=other)


def pad_rows_to(x, multiple: int, value=0):
    """x padded with `value` rows up to a multiple of `multiple` (queries only: they are
    small next to the database, which kernels read in place)."""
    n = x.shape[0]
    n_to = max(multiple, -(-n // multiple) * multiple)
    if n_to == n:
        return x
    return jnp.pad(x, [(0, n_to - n)] + [(0, 0)] * (x.ndim - 1), constant_values=value)


def _lex_less(key_a, row_a, key_b, row_b):
    return (key_a < key_b) | ((key_a == key_b) & (row_a < row_b))


def fold_tile(buf_keys, buf_rows, keys, rows):
    """Insert the entries of one (bq, bn) key block that beat each row's buffer."""
    rows = jnp.broadcast_to(rows[None, :], keys.shape)
    limit = min(buf_keys.shape[1], keys.shape[1]) + 1

    def cond(state):
        i, _, _, _, improved = state
        return (i < limit) & (improved > 0)

    def body(state):
        i, bk, br, keys, _ = state
        best = jnp.min(keys, axis=1)
        best_row = jnp.min(jnp.where(keys == best[:, None], rows, _BIG_ROW), axis=1)
        worst = jnp.max(bk, axis=1)
        worst_row = jnp.max(jnp.where(bk == worst[:, None], br, -_BIG_ROW), axis=1)
        better = _lex_less(best, best_row, worst, worst_row)
        # Rows in the buffer are distinct (a row enters once: it is masked out of `keys`
        # below, and tiles do not overlap), so this picks exactly one slot.
        slot = better[:, None] & (bk == worst[:, None]) & (br == worst_row[:, None])
        bk = jnp.where(slot, best[:, None], bk)
        br = jnp.where(slot, best_row[:, None], br)
        taken = better[:, None] & (rows == best_row[:, None])
        keys = jnp.where(taken, jnp.inf, keys)
        return i + 1, bk, br, keys, jnp.max(better.astype(jnp.int32))

    _, buf_keys, buf_rows, _, _ = jax.lax.while_loop(
        cond, body, (jnp.int32(0), buf_keys, buf_rows, keys, jnp.int32(1)))
    return buf_keys, buf_rows


def scan_top_k(key_tile, n: int, block_q: int, block_n: int, k_pad: int,
               after_key, after_row):
    """Inside a kernel: the k_pad lexicographically smallest (key, row) per query.

    key_tile(start, in_range) gives the (block_q, block_n) float32 keys of database rows
    start .. start + block_n - 1; `in_range` (block_n,) says which of them exist (< n):
    kernels load the tile with it as the mask (`load_rows`), so reads stay contiguous and
    in bounds, and entries for rows >= n are masked here whatever the tile holds. Only
    entries after (after_key, after_row) (per query, (block_q,)) count: the threshold of
    `multipass_top_k`. Empty slots hold (+inf, negative row).
    """
    n_tiles = max(1, -(-n // block_n))
    lane = jax.lax.broadcasted_iota(jnp.int32, (block_n,), 0)

    def tile(t, carry):
        start = pl.multiple_of(t * block_n, block_n)
        rows = start + lane
        keys = key_tile(start, rows < n)
        keys = jnp.where(jnp.isnan(keys), jnp.inf, keys)
        keep = (rows < n)[None, :] & _lex_less(
            after_key[:, None], after_row[:, None], keys, rows[None, :])
        return fold_tile(*carry, jnp.where(keep, keys, jnp.inf), rows)

    init = (jnp.full((block_q, k_pad), jnp.inf, jnp.float32),
            -1 - jax.lax.broadcasted_iota(jnp.int32, (block_q, k_pad), 1))
    return jax.lax.fori_loop(0, n_tiles, tile, init)


def finish(keys, rows, k: int):
    """Kernel buffers (nq, k_pad), unordered -> the k best ascending, (+inf, -1) where a
    query has fewer than k entries."""
    keys, rows = jax.lax.sort((keys, rows), dimension=1, num_keys=2)
    keys, rows = keys[:, :k], rows[:, :k]
    return keys, jnp.where((rows < 0) | jnp.isposinf(keys), -1, rows)


def multipass_top_k(run_pass, nq: int, k: int, max_k: int):
    """Any k from a kernel that keeps at most max_k: pass p returns the next entries
    after the last one of pass p - 1 (exact, ties included, by the lexicographic order).

    run_pass(k_pad, after_key, after_row) -> (keys, rows) (nq, k_pad), unordered.
    Returns (keys, rows) (nq, k) ascending, (+inf, -1) where missing.
    """
    after_key = jnp.full((nq,), -jnp.inf, jnp.float32)
    after_row = jnp.full((nq,), -1, jnp.int32)
    parts_k, parts_r = [], []
    remaining = k
    while remaining > 0:
        take = min(remaining, max_k)
        keys, rows = finish(*run_pass(next_pow2(take), after_key, after_row), take)
        parts_k.append(keys)
        parts_r.append(rows)
        # A missing entry (+inf, -1) as threshold lets nothing through: later passes of
        # that query come back empty, as they should.
        after_key, after_row = keys[:, -1], jnp.where(rows[:, -1] < 0, _BIG_ROW, rows[:, -1])
        remaining -= take
    if len(parts_k) == 1:
        return parts_k[0], parts_r[0]
    return jnp.concatenate(parts_k, axis=1), jnp.concatenate(parts_r, axis=1)


def _query_spec(block_q: int, shape):
    rest = tuple(shape[1:])
    return pl.BlockSpec((block_q,) + rest, lambda i: (i,) + (0,) * len(rest))


def scan_call(make_key_tile, queries, database, n: int, k: int, config: ScanConfig, *,
              interpret: bool, name: str):
    """The k best (key, row) per query of a scan kernel, for any k.

    queries: per-query arrays (nq, ...), each program sees its block of block_q rows;
    database: arrays the kernel indexes itself (read in place, never copied). Inside the
    kernel, make_key_tile(query_refs, database_refs) returns key_tile(rows) for
    `scan_top_k`. Returns (keys, rows) (nq, k) ascending, (+inf, -1) where missing.
    """
    nq = queries[0].shape[0]
    bq = config.block_q
    queries = [pad_rows_to(x, bq) for x in queries]
    nq_pad = queries[0].shape[0]
    n_in, n_db = len(queries), len(database)

    def kernel(*refs):
        q_refs, (after_key, after_row) = refs[:n_in], refs[n_in:n_in + 2]
        db_refs, (keys_ref, rows_ref) = refs[n_in + 2:n_in + 2 + n_db], refs[-2:]
        keys, rows = scan_top_k(make_key_tile(q_refs, db_refs), n, bq, config.block_n,
                                keys_ref.shape[1], after_key[...], after_row[...])
        keys_ref[...] = keys
        rows_ref[...] = rows

    def run_pass(k_pad, after_key, after_row):
        out_spec = _query_spec(bq, (nq_pad, k_pad))
        return pl.pallas_call(
            kernel,
            grid=(nq_pad // bq,),
            in_specs=([_query_spec(bq, x.shape) for x in queries]
                      + [_query_spec(bq, (nq_pad,))] * 2 + [pl.no_block_spec] * n_db),
            out_specs=[out_spec, out_spec],
            out_shape=[jax.ShapeDtypeStruct((nq_pad, k_pad), jnp.float32),
                       jax.ShapeDtypeStruct((nq_pad, k_pad), jnp.int32)],
            compiler_params=None if interpret else config.compiler_params(),
            interpret=interpret,
            name=name,
        )(*queries, after_key, after_row, *database)

    keys, rows = multipass_top_k(run_pass, nq_pad, k, config.max_k)
    return keys[:nq], rows[:nq]
