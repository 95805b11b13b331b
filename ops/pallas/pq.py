"""PQ / ADC scan as a Pallas kernel: look-up-table distances with the top-k fused.

Each program takes a block of queries and their look-up tables (block_q, M * ksub), then
walks the codes in tiles: for each sub-space it reads one code byte (or nibble) per row
and gathers the matching table entries for all queries of the block, summing in float32
into a (block_q, block_n) key block that goes straight into the running top-k. The
(nq, n) distance matrix never reaches memory.

Code layout is `jann.quantizers.pq`'s (identical to FAISS's for 4 and 8 bits): one byte
per sub-code for nbits 5..8; two per byte for nbits 1..4, sub-code 2j in the low nibble of
byte j and 2j+1 in the high nibble.

On Triton the gathers read the tables through the L1 cache rather than from an explicit
shared-memory copy (Pallas Triton has no scratch memory); a Mosaic GPU variant with the
tables in SMEM is the step after a GPU measurement says the gathers are the bottleneck.

The oracle is `jann.quantizers.pq.adc_lookup` (over `unpack_codes`) followed by
`lax.top_k`; `ops` may not import `jann`, so the tests compose it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..knn import streamed_top_k
from .plans import plan_adc
from .topk import ScanConfig, load_rows, next_pow2, scan_call

__all__ = ["adc_top_k_pallas", "adc_top_k_xla", "load_sub_code", "plan_adc"]


def load_sub_code(codes_ref, start, n_rows: int, in_range, m, nbits: int):
    """Inside a kernel: sub-code m (int32; m may be traced) of rows start ..
    start + n_rows - 1, from the byte that holds it (the module doc's layout: its own
    byte, or a nibble of byte m // 2)."""
    if nbits > 4:
        return load_rows(codes_ref, start, n_rows, in_range, m).astype(jnp.int32)
    # Shifts and masks, not // and %: jnp's floor division and modulo of a traced int
    # lower to sign selects Triton cannot type ("('i32', 'i1')").
    byte = load_rows(codes_ref, start, n_rows, in_range, jnp.right_shift(m, 1))
    return jnp.right_shift(byte.astype(jnp.int32), 4 * jnp.bitwise_and(m, 1)) & 0xF


def _key_tile_maker(M: int, nbits: int):
    ksub = 1 << nbits

    def make(q_refs, db_refs):
        (lut_ref,), (codes_ref, bias_ref) = q_refs, db_refs
        queries = jax.lax.broadcasted_iota(jnp.int32, (lut_ref.shape[0], 1), 0)

        def key_tile(start, in_range):
            n_rows = in_range.shape[0]
            bias = load_rows(bias_ref, start, n_rows, in_range, other=jnp.inf)
            # A loop, not unrolled: compile time and code size stay flat in M (192
            # unrolled sub-spaces took ~5 s of Triton + ptxas per kernel).
            def sub_space(m, acc):
                code = load_sub_code(codes_ref, start, n_rows, in_range, m, nbits)
                return acc + lut_ref[queries, m * ksub + code[None, :]]

            return jax.lax.fori_loop(
                0, M, sub_space, jnp.broadcast_to(bias[None, :], (lut_ref.shape[0], n_rows)))

        return key_tile
    return make


def _unpacked(codes, M: int, nbits: int):
    """(n, code_size) uint8 -> (n, M) int32 sub-codes (the module doc's layout)."""
    codes = codes.astype(jnp.int32)
    if nbits > 4:
        return codes
    nibbles = jnp.stack([codes & 0xF, codes >> 4], axis=-1)
    return nibbles.reshape(codes.shape[0], -1)[:, :M]


def _prepared(tables, codes, nbits, metric, xb_valid):
    """Flat smaller-is-better tables (nq, M * ksub) and the row bias (+inf: excluded)."""
    if metric not in ("l2", "ip"):
        raise ValueError(f"ADC scans support 'l2' and 'ip', got {metric!r}")
    nq, M, ksub = tables.shape
    if ksub != 1 << nbits:
        raise ValueError(f"tables have {ksub} entries per sub-space, nbits={nbits} needs "
                         f"{1 << nbits}")
    lut = tables.astype(jnp.float32).reshape(nq, M * ksub)
    bias = jnp.zeros((codes.shape[0],), jnp.float32)
    if xb_valid is not None:
        bias = jnp.where(xb_valid, bias, jnp.inf)
    return (lut if metric == "l2" else -lut), bias


def _missing(nq, k, metric):
    fill = jnp.inf if metric == "l2" else -jnp.inf
    return jnp.full((nq, k), fill, jnp.float32), jnp.full((nq, k), -1, jnp.int32)


# The XLA path streams (query_block, tile) blocks of looked-up sums, as `knn_scan` does.
XLA_TILE, XLA_QUERY_BLOCK = 1024, 256


def adc_top_k_xla(tables, codes, k: int, nbits: int, metric: str = "l2", *, xb_valid=None):
    """`adc_top_k_pallas`'s contract on plain XLA (the fallback): tiles of codes, one
    gather per sub-space into the flattened tables, streamed top-k."""
    nq, M, ksub = tables.shape
    n = codes.shape[0]
    if n == 0:
        return _missing(nq, k, metric)
    lut, _ = _prepared(tables, codes, nbits, metric, None)
    tile = min(XLA_TILE, n)
    offsets = jnp.arange(M, dtype=jnp.int32) * ksub

    def keys_of_tile(q_lut, code_tile):
        flat_index = _unpacked(code_tile, M, nbits) + offsets[None, :]   # (tile, M)
        keys = jnp.sum(jnp.take(q_lut, flat_index, axis=1), axis=-1)     # (q, tile)
        return jnp.where(jnp.isnan(keys), jnp.inf, keys)

    keys, rows = streamed_top_k(lut, codes, k, tile, XLA_QUERY_BLOCK, keys_of_tile,
                                base_valid=xb_valid)
    rows = jnp.where(jnp.isposinf(keys), -1, rows)
    return (keys if metric == "l2" else -keys), rows


def adc_top_k_pallas(tables, codes, k: int, nbits: int, metric: str = "l2", *,
                     xb_valid=None, config: ScanConfig | None = None,
                     interpret: bool = False):
    """k best codes per query under asymmetric distances; traceable, no validation.

    tables: (nq, M, 2**nbits) float32 (`ProductQuantizer.distance_tables`); codes:
    (n, code_size) uint8 packed as in the module doc; metric "l2" (tables hold distances,
    smallest first) or "ip" (tables hold inner products, largest first). Returns
    (scores (nq, k) float32, rows (nq, k) int32), +inf / -inf and -1 where missing.
    config: launch parameters, `plan_adc(k)` when None.
    """
    nq, M, _ = tables.shape
    if codes.shape[0] == 0:
        return _missing(nq, k, metric)
    config = plan_adc(k) if config is None else config
    lut, bias = _prepared(tables, codes, nbits, metric, xb_valid)
    width = lut.shape[1]  # Triton blocks are powers of two: the tables' columns padded
    lut = jnp.pad(lut, ((0, 0), (0, next_pow2(width) - width)))
    keys, rows = scan_call(_key_tile_maker(M, nbits), [lut], [codes, bias], codes.shape[0],
                           k, config, interpret=interpret, name=f"jann_adc_pq{nbits}")
    return (keys if metric == "l2" else -keys), rows
