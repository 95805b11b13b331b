"""Hamming k-NN over packed binary codes as a Pallas kernel, top-k fused.

Codes are read as uint32 words (`ops.hamming`'s layout: bytes little-endian, zero-padded
to whole words; the padding is equal on both sides, so it adds nothing). For each
database tile the kernel loads one word column at a time, so W (words per code) need not
be a power of two and no padded copy of the database is made; popcount is
`lax.population_count`, which Triton lowers to `__nv_popc`. Distances are exact in the
float32 keys of the shared running top-k (codes up to 2**24 bits).

Results follow `ops.hamming.knn_hamming` (FAISS `IndexBinaryFlat`): int32 distances
ascending, ties by lower row, -1 / INT32_MAX where fewer than k codes qualify.
`knn_hamming_reference` is the oracle.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..hamming import MISSING_DISTANCE, _words, knn_hamming_reference
from .topk import ScanConfig, scan_call

__all__ = ["DEFAULT_CONFIG", "knn_hamming_pallas", "knn_hamming_reference"]

# No matmul here, so block_q is not tied to 16; 32 queries x 128 rows of int32 per word
# keeps the per-tile block at 32 registers per thread with 4 warps.
DEFAULT_CONFIG = ScanConfig(block_q=32, block_n=128, max_k=128)


def _make_key_tile(q_refs, db_refs):
    (q_ref,), (xb_ref, bias_ref) = q_refs, db_refs
    n_words = q_ref.shape[1]

    def key_tile(rows):
        dist = jnp.zeros((q_ref.shape[0], rows.shape[0]), jnp.int32)
        for w in range(n_words):
            x = jnp.bitwise_xor(q_ref[:, w][:, None], xb_ref[rows, w][None, :])
            dist = dist + jax.lax.population_count(x).astype(jnp.int32)
        return dist.astype(jnp.float32) + bias_ref[rows][None, :]

    return key_tile


def knn_hamming_pallas(xq_codes, xb_codes, k: int, *, xb_valid=None,
                       config: ScanConfig = DEFAULT_CONFIG, interpret: bool = False):
    """Exact Hamming k-NN of (nq, nbytes) uint8 codes among (n, nbytes); traceable, no
    validation. Returns (distances (nq, k) int32, rows (nq, k) int32)."""
    nq = xq_codes.shape[0]
    n = xb_codes.shape[0]
    if n == 0:
        return (jnp.full((nq, k), MISSING_DISTANCE, jnp.int32),
                jnp.full((nq, k), -1, jnp.int32))
    bias = jnp.zeros((n,), jnp.float32)
    if xb_valid is not None:
        bias = jnp.where(xb_valid, bias, jnp.inf)
    keys, rows = scan_call(_make_key_tile, [_words(xq_codes)], [_words(xb_codes), bias], n,
                           k, config, interpret=interpret, name="jann_knn_hamming")
    missing = rows < 0
    return jnp.where(missing, MISSING_DISTANCE, keys.astype(jnp.int32)), rows
