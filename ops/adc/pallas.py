"""PQ / ADC scan as a Pallas kernel: look-up-table distances with the top-k fused.

Each program takes a block of queries and their look-up tables (block_q, M * ksub), then
walks the codes in tiles: for each sub-space it reads one code byte (or nibble) per row
and gathers the matching table entries for all queries of the block, summing in float32
into a (block_q, block_n) key block that goes straight into the running top-k. The
(nq, n) distance matrix never reaches memory.

Code layout is `jann.ops.codes`'s (identical to FAISS's for 4 and 8 bits): one byte per
sub-code for nbits 5..8; two per byte for nbits 1..4, sub-code 2j in the low nibble of
byte j and 2j+1 in the high nibble. `load_sub_code` reads it inside a kernel (the IVF
list scan's "pq" decode uses it too).

On Triton the gathers read the tables through the L1 cache rather than from an explicit
shared-memory copy (Pallas Triton has no scratch memory); a Mosaic GPU variant with the
tables in SMEM is the step after a GPU measurement says the gathers are the bottleneck.

The oracle is `adc.reference.adc_top_k_reference` (`adc_lookup` over every code, then
`lax.top_k`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..plans import plan_adc
from ..topk.pallas import ScanConfig, load_rows, next_pow2, scan_call
from .reference import empty_results, keyed_tables, row_bias

__all__ = ["adc_top_k_pallas", "load_sub_code"]


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
        return empty_results(nq, k, metric)
    config = plan_adc(k) if config is None else config
    lut = keyed_tables(tables, nbits, metric)
    bias = row_bias(codes.shape[0], xb_valid)
    width = lut.shape[1]  # Triton blocks are powers of two: the tables' columns padded
    lut = jnp.pad(lut, ((0, 0), (0, next_pow2(width) - width)))
    keys, rows = scan_call(_key_tile_maker(M, nbits), [lut], [codes, bias], codes.shape[0],
                           k, config, interpret=interpret, name=f"jann_adc_pq{nbits}")
    return (keys if metric == "l2" else -keys), rows
