"""Packed sub-codes: rows of M small integers of `nbits` bits each, as one uint8 code.

The layout every codec whose code is M small indices uses (the product, residual and
additive quantizers of `jann.quantizers`, the 4-bit scalar quantizer), and that the scans
over such codes read (`jann.ops.adc`, the "pq" decode of `jann.ops.ivf_scan`, whose
kernels address it with `adc.pallas.load_sub_code`):

- nbits 9..16: two bytes per sub-code, low byte first (sub-code j in bytes 2j, 2j+1),
  code_size = 2 M;
- nbits 5..8: one byte per sub-code, code_size = M;
- nbits 1..4: two sub-codes per byte, sub-code 2j in the low nibble and 2j+1 in the high
  nibble of byte j, code_size = ceil(M / 2).

For 4 and 8 bits these are FAISS's bytes (PQ and SQ4 alike); a kernel never needs bit
arithmetic across byte boundaries (FAISS packs other widths bit by bit: PQ16x10 is 20
bytes there, 32 here).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["pack_codes", "unpack_codes"]


def pack_codes(codes: jax.Array, nbits: int) -> jax.Array:
    """(n, M) integer sub-codes -> (n, code_size) uint8 in the layout of the module doc."""
    if nbits > 8:
        wide = codes.astype(jnp.uint16)
        pairs = jnp.stack([wide & 0xFF, wide >> 8], axis=-1).astype(jnp.uint8)
        return pairs.reshape(codes.shape[0], 2 * codes.shape[1])
    codes = codes.astype(jnp.uint8)
    if nbits > 4:
        return codes
    if codes.shape[1] % 2:
        codes = jnp.pad(codes, ((0, 0), (0, 1)))
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def unpack_codes(packed: jax.Array, M: int, nbits: int) -> jax.Array:
    """(n, code_size) uint8 -> (n, M) int32 sub-codes; inverse of `pack_codes`."""
    packed = packed.astype(jnp.int32)
    if nbits > 8:
        return packed[:, 0::2] | (packed[:, 1::2] << 8)
    if nbits > 4:
        return packed
    nibbles = jnp.stack([packed & 0xF, packed >> 4], axis=-1)
    return nibbles.reshape(packed.shape[0], 2 * packed.shape[1])[:, :M]
