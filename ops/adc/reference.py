"""PQ asymmetric distance computation (ADC): the definition every path shares and the
oracle.

A query's distance (or inner product) to a stored code is the sum over the M sub-spaces
of its look-up table entry for the code's sub-code m: tables (nq, M, 2**nbits) hold them
(`ProductQuantizer.distance_tables`), codes (n, code_size) uint8 are packed as
`jann.ops.codes` says (bytes for nbits 5..8, nibbles for 1..4). Metric "l2": the tables
hold distances, smallest first; "ip": inner products, largest first.

`adc_lookup` is every code's sum (the (nq, n) matrix) and `adc_top_k_reference` the top-k
over it (`lax.top_k`): the oracle of `adc.xla.adc_top_k_xla` and
`adc.pallas.adc_top_k_pallas`, which never materialise the matrix.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..codes import unpack_codes
from ..errors import InvalidInputError
from ..topk.reference import top_k_smallest

__all__ = ["METRICS", "adc_lookup", "adc_top_k_reference", "empty_results", "keyed_tables",
           "row_bias"]

METRICS = ("l2", "ip")


def keyed_tables(tables, nbits: int, metric: str):
    """The tables (nq, M, 2**nbits) checked and flattened to smaller-is-better keys
    (nq, M * 2**nbits) float32: as they are for l2, negated for ip."""
    if metric not in METRICS:
        raise InvalidInputError(f"ADC scans support 'l2' and 'ip', got {metric!r}")
    nq, M, ksub = tables.shape
    if ksub != 1 << nbits:
        raise InvalidInputError(f"tables have {ksub} entries per sub-space, nbits={nbits} "
                                f"needs {1 << nbits}")
    lut = tables.astype(jnp.float32).reshape(nq, M * ksub)
    return lut if metric == "l2" else -lut


def row_bias(n: int, xb_valid=None):
    """(n,) float32 added to every key of a row: 0, +inf for rows outside xb_valid."""
    bias = jnp.zeros((n,), jnp.float32)
    if xb_valid is not None:
        bias = jnp.where(xb_valid, bias, jnp.inf)
    return bias


def empty_results(nq: int, k: int, metric: str):
    """(scores, rows) (nq, k) of a search with no code: +inf (l2) / -inf (ip), -1."""
    fill = jnp.inf if metric == "l2" else -jnp.inf
    return jnp.full((nq, k), fill, jnp.float32), jnp.full((nq, k), -1, jnp.int32)


def adc_lookup(tables: jax.Array, codes: jax.Array) -> jax.Array:
    """Sum over m of tables[q, m, codes[i, m]]: (nq, M, ksub) x (n, M) sub-codes (unpacked)
    -> (nq, n) float32.

    One gather-and-add per sub-space, so the extra memory is the (nq, n) result; the
    scans (`jann.ops.adc`) stream it in tiles with the top-k fused instead.
    """
    def add_subspace(acc, table_and_codes):
        table, sub_codes = table_and_codes          # (nq, ksub), (n,)
        return acc + jnp.take(table, sub_codes, axis=1), None

    init = jnp.zeros((tables.shape[0], codes.shape[0]), jnp.float32)
    total, _ = jax.lax.scan(add_subspace, init,
                            (jnp.swapaxes(tables, 0, 1).astype(jnp.float32), codes.T))
    return total


def adc_top_k_reference(tables, codes, k: int, nbits: int, metric: str = "l2", *,
                        xb_valid=None):
    """The ADC scans' contract on the full (nq, n) matrix (for tests): every code's
    `adc_lookup` sum, then `lax.top_k`. Returns (scores (nq, k) float32, rows (nq, k)
    int32), ascending for l2, descending for ip, +inf / -inf and -1 where missing."""
    keyed_tables(tables, nbits, metric)  # the checks
    nq, M, _ = tables.shape
    n = codes.shape[0]
    if n == 0:
        return empty_results(nq, k, metric)
    scores = adc_lookup(tables, unpack_codes(codes, M, nbits))
    keyed = scores if metric == "l2" else -scores
    keyed = jnp.where(jnp.isnan(keyed), jnp.inf, keyed) + row_bias(n, xb_valid)[None, :]
    take = min(k, n)
    values, rows = top_k_smallest(keyed, take)
    rows = jnp.where(jnp.isposinf(values), -1, rows)
    pad = ((0, 0), (0, k - take))
    values = jnp.pad(values, pad, constant_values=jnp.inf)
    rows = jnp.pad(rows, pad, constant_values=-1)
    return (values if metric == "l2" else -values), rows
