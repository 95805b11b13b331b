"""Binary codes: bit packing, Hamming distances, input checks and the oracle of the
Hamming k-NN (the full distance matrix, then `lax.top_k`).

Bit order is FAISS's: bit j of a code is bit j % 8 (least significant first) of byte
j // 8. That is the convention of `faiss.real_to_binary` / `fvecs2bitvecs` (what IndexLSH
and the ITQ/LSH binarizers produce) and of `faiss.pack_bitstrings`, and it equals
`np.packbits(bits, axis=1, bitorder="little")`. Hamming distances themselves do not depend
on the bit order, only on both sides using the same one.

Distances are popcounts of xor, computed on uint32 words (codes zero-padded to a whole
number of words; the padding bits are equal on both sides, so they add nothing). Results
follow `IndexBinaryFlat`: int32 distances, ties ordered by lower id, and id -1 with
distance INT32_MAX (2**31 - 1) where fewer than k codes exist.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import InvalidDtypeError, InvalidInputError
from ..topk import check_k

__all__ = ["MISSING_DISTANCE", "as_words", "check_code_pair", "check_codes", "check_valid",
           "knn_hamming_reference", "pack_bits", "popcount_distances", "unpack_bits"]

# FAISS IndexBinaryFlat's distance for a missing result (k > number of codes).
MISSING_DISTANCE = np.iinfo(np.int32).max


# --- packing ------------------------------------------------------------------------------

def pack_bits(bits) -> jax.Array:
    """(n, nbits) bools (or 0/1 integers: nonzero is 1) -> (n, ceil(nbits / 8)) uint8.

    Bit j goes to byte j // 8, bit j % 8 (LSB first, FAISS's order); when nbits is not a
    multiple of 8 the last byte's high bits are 0. Traceable.
    """
    bits = jnp.asarray(bits)
    if bits.ndim != 2:
        raise InvalidInputError(f"pack_bits needs a 2-D (n, nbits) array, got {bits.shape}")
    n, nbits = bits.shape
    nbytes = -(-nbits // 8)
    b = (bits != 0).astype(jnp.uint8)
    b = jnp.pad(b, ((0, 0), (0, nbytes * 8 - nbits))).reshape(n, nbytes, 8)
    weights = jnp.left_shift(jnp.uint8(1), jnp.arange(8, dtype=jnp.uint8))
    return jnp.sum(b * weights, axis=-1, dtype=jnp.uint8)


def unpack_bits(codes, nbits: int | None = None) -> jax.Array:
    """(n, nbytes) uint8 -> (n, nbits) bool, the inverse of `pack_bits` (LSB first).

    nbits defaults to 8 * nbytes and may not exceed it. Traceable.
    """
    codes = check_codes(codes, "codes")
    n, nbytes = codes.shape
    nbits = 8 * nbytes if nbits is None else int(nbits)
    if not 0 <= nbits <= 8 * nbytes:
        raise InvalidInputError(f"unpack_bits: nbits={nbits} does not fit {nbytes} bytes")
    shifts = jnp.arange(8, dtype=jnp.uint8)
    bits = (jnp.right_shift(codes[:, :, None], shifts) & jnp.uint8(1)).astype(bool)
    return bits.reshape(n, 8 * nbytes)[:, :nbits]


def as_words(codes):
    """(n, nbytes) uint8 -> (n, ceil(nbytes / 4)) uint32 (zero-padded, little-endian)."""
    n, nbytes = codes.shape
    nwords = max(1, -(-nbytes // 4))
    codes = jnp.pad(codes, ((0, 0), (0, nwords * 4 - nbytes))).reshape(n, nwords, 4)
    c = codes.astype(jnp.uint32)
    return c[..., 0] | (c[..., 1] << 8) | (c[..., 2] << 16) | (c[..., 3] << 24)


def popcount_distances(a_words, b_words):
    """(na, W), (nb, W) uint32 -> (na, nb) int32 Hamming distances."""
    x = jnp.bitwise_xor(a_words[:, None, :], b_words[None, :, :])
    return jnp.sum(jax.lax.population_count(x).astype(jnp.int32), axis=-1, dtype=jnp.int32)


# --- validation ---------------------------------------------------------------------------

def check_codes(codes, name):
    codes = jnp.asarray(codes)
    if codes.dtype != jnp.uint8:
        raise InvalidDtypeError(f"{name} must be uint8 packed binary codes, got {codes.dtype}")
    if codes.ndim != 2:
        raise InvalidInputError(f"{name} must be 2-D (n, code_size), got shape {codes.shape}")
    return codes


def check_code_pair(a, b):
    a = check_codes(a, "query codes")
    b = check_codes(b, "database codes")
    if a.shape[1] != b.shape[1]:
        raise InvalidInputError(
            f"code sizes differ: queries have {a.shape[1]} bytes, database {b.shape[1]}")
    return a, b


def check_valid(xb_valid, n):
    if xb_valid is None:
        return None
    xb_valid = jnp.asarray(xb_valid)
    if xb_valid.shape != (n,) or xb_valid.dtype != jnp.bool_:
        raise InvalidInputError(
            f"xb_valid must be a ({n},) bool array, got {xb_valid.shape} {xb_valid.dtype}")
    return xb_valid


# --- the oracle ---------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("k",))
def _knn_hamming_reference_jit(xq, xb, xb_valid, k):
    dist = popcount_distances(as_words(xq), as_words(xb))
    take = min(k, xb.shape[0])
    keyed = dist.astype(jnp.float32)
    if xb_valid is not None:
        keyed = jnp.where(xb_valid[None, :], keyed, jnp.inf)
    values, idx = jax.lax.top_k(-keyed, take)  # ties: lower index first
    values = -values
    missing = jnp.isinf(values)
    values = jnp.where(missing, MISSING_DISTANCE, values.astype(jnp.int32)).astype(jnp.int32)
    idx = jnp.where(missing, -1, idx).astype(jnp.int32)
    values = jnp.pad(values, ((0, 0), (0, k - take)), constant_values=MISSING_DISTANCE)
    idx = jnp.pad(idx, ((0, 0), (0, k - take)), constant_values=-1)
    return values, idx


def knn_hamming_reference(xq_codes, xb_codes, k: int, *, xb_valid=None):
    """Oracle for `knn_hamming`: the full distance matrix, then `lax.top_k`."""
    xq, xb = check_code_pair(xq_codes, xb_codes)
    return _knn_hamming_reference_jit(xq, xb, check_valid(xb_valid, xb.shape[0]), check_k(k))
