"""Hamming k-NN over packed binary codes as a Pallas kernel, top-k fused.

Codes are read as 32-bit words (`hamming.reference.as_words`: bytes little-endian,
zero-padded to whole words; the padding is equal on both sides, so it adds nothing),
bit-cast to int32: Triton's popcount (`__nv_popc`) legalizes for int32 only (uint32
failed to compile for every NVIDIA target). For each database tile the kernel loads one
word column at a time in a loop, so W (words per code) need not be a power of two and no
padded copy of the database is made. Distances are exact in the float32 keys of the
shared running top-k (codes up to 2**24 bits).

Results follow `hamming.knn_hamming` (FAISS `IndexBinaryFlat`): int32 distances
ascending, ties by lower row, -1 / INT32_MAX where fewer than k codes qualify.
`hamming.reference.knn_hamming_reference` is the oracle.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..plans import plan_hamming
from ..topk.pallas import ScanConfig, load_rows, scan_call
from .reference import MISSING_DISTANCE, as_words

__all__ = ["knn_hamming_pallas"]


def _make_key_tile(q_refs, db_refs):
    (q_ref,), (xb_ref, bias_ref) = q_refs, db_refs
    n_words = q_ref.shape[1]

    def key_tile(start, in_range):
        n_rows = in_range.shape[0]

        def word(w, dist):
            x = jnp.bitwise_xor(q_ref[:, w][:, None],
                                load_rows(xb_ref, start, n_rows, in_range, w)[None, :])
            return dist + jax.lax.population_count(x)

        dist = jax.lax.fori_loop(0, n_words, word,
                                 jnp.zeros((q_ref.shape[0], n_rows), jnp.int32))
        bias = load_rows(bias_ref, start, n_rows, in_range, other=jnp.inf)
        return dist.astype(jnp.float32) + bias[None, :]

    return key_tile


def _signed_words(codes):
    """Codes as int32 words: Triton lowers popcount (`__nv_popc`) for int32 only, and the
    count of a word does not depend on its sign."""
    return jax.lax.bitcast_convert_type(as_words(codes), jnp.int32)


def knn_hamming_pallas(xq_codes, xb_codes, k: int, *, xb_valid=None,
                       config: ScanConfig | None = None, interpret: bool = False):
    """Exact Hamming k-NN of (nq, nbytes) uint8 codes among (n, nbytes); traceable, no
    validation. Returns (distances (nq, k) int32, rows (nq, k) int32). config: launch
    parameters, `plan_hamming(k)` when None."""
    nq = xq_codes.shape[0]
    n = xb_codes.shape[0]
    if n == 0:
        return (jnp.full((nq, k), MISSING_DISTANCE, jnp.int32),
                jnp.full((nq, k), -1, jnp.int32))
    config = plan_hamming(k) if config is None else config
    bias = jnp.zeros((n,), jnp.float32)
    if xb_valid is not None:
        bias = jnp.where(xb_valid, bias, jnp.inf)
    keys, rows = scan_call(_make_key_tile, [_signed_words(xq_codes)],
                           [_signed_words(xb_codes), bias], n, k, config,
                           interpret=interpret, name="jann_knn_hamming")
    missing = rows < 0
    return jnp.where(missing, MISSING_DISTANCE, keys.astype(jnp.int32)), rows
