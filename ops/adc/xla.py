"""The ADC scan on XLA (the fallback of the kernel): tiles of codes, one gather per
sub-space into the flattened tables, streamed top-k (`knn.xla.streamed_top_k`), so the
(nq, n) matrix is never materialised."""

from __future__ import annotations

import jax.numpy as jnp

from ..codes import unpack_codes
from ..knn.xla import streamed_top_k
from .reference import empty_results, keyed_tables

__all__ = ["XLA_QUERY_BLOCK", "XLA_TILE", "adc_top_k_xla"]

# (query_block, tile) blocks of looked-up sums, streamed as `knn_scan` does.
XLA_TILE, XLA_QUERY_BLOCK = 1024, 256


def adc_top_k_xla(tables, codes, k: int, nbits: int, metric: str = "l2", *, xb_valid=None):
    """`adc_top_k_pallas`'s contract on plain XLA; traceable, no validation."""
    nq, M, ksub = tables.shape
    n = codes.shape[0]
    if n == 0:
        return empty_results(nq, k, metric)
    lut = keyed_tables(tables, nbits, metric)
    tile = min(XLA_TILE, n)
    offsets = jnp.arange(M, dtype=jnp.int32) * ksub

    def keys_of_tile(q_lut, code_tile):
        flat_index = unpack_codes(code_tile, M, nbits) + offsets[None, :]   # (tile, M)
        keys = jnp.sum(jnp.take(q_lut, flat_index, axis=1), axis=-1)        # (q, tile)
        return jnp.where(jnp.isnan(keys), jnp.inf, keys)

    keys, rows = streamed_top_k(lut, codes, k, tile, XLA_QUERY_BLOCK, keys_of_tile,
                                base_valid=xb_valid)
    rows = jnp.where(jnp.isposinf(keys), -1, rows)
    return (keys if metric == "l2" else -keys), rows
