"""Scalar quantizer: each vector component coded on its own (FAISS `ScalarQuantizer`).

Types (factory names): "SQ8", "SQ6", "SQ4" (per-dimension range, trained), "SQ8_uniform",
"SQ4_uniform" (one range for all dimensions, trained), "SQ8_direct" (values 0..255 stored
as they are), "SQfp16", "SQbf16" (half-precision floats; no training).

Encoding follows FAISS 1.15 bit for bit (checked against faiss-cpu in tests/test_sq.py):

- training with FAISS's default range statistic (RS_minmax, rangestat_arg 0): vmin = min,
  vdiff = max - min, per dimension or over all values;
- a component is normalised to xi = clip((x - vmin) / vdiff, 0, 1) in float32 (xi = 0
  where vdiff == 0) and coded as trunc(255 * xi) in float32 for 8 bits, and as
  trunc(xi * 15.0) / trunc(xi * 63.0) evaluated in double for 4 / 6 bits (FAISS multiplies
  by a double literal there; the double product of a float and a small integer is exact,
  so it is computed here in integer arithmetic, with no float64 needed);
- codes are packed densely, least significant bits first: value i occupies bits
  [b * i, b * (i + 1)) of the code (b = 4 or 6), code_size = ceil(d * b / 8);
- decoding returns vmin + (code + 0.5) / (2**b - 1) * vdiff;
- "SQ8_direct" stores trunc(x) (FAISS casts float to uint8; values outside [0, 255] are
  undefined behaviour there and are clipped here);
- "SQfp16" rounds as FAISS's software `encode_fp16` does: to nearest, ties away from
  zero (not IEEE ties-to-even), overflow to +-inf; "SQbf16" as `encode_bf16`: add 0x8000
  to the float32 bits and keep the high half (ties away from zero). Both are reproduced
  here with integer operations on the float32 bits, so they also hold where XLA flushes
  denormals to zero. Each 16-bit value is stored little-endian (2 bytes).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jann._pytree import pytree_dataclass, static
from jann.errors import InvalidDtypeError, InvalidInputError, NotTrainedError
from jann.ops.codes import pack_codes, unpack_codes
from jann.ops.ivf_scan import KernelDecode

__all__ = ["ScalarQuantizer", "QTYPES"]

# factory name -> (FAISS QuantizerType name, bits per component, kind)
QTYPES: dict[str, tuple[str, int, str]] = {
    "SQ8": ("QT_8bit", 8, "nonuniform"),
    "SQ6": ("QT_6bit", 6, "nonuniform"),
    "SQ4": ("QT_4bit", 4, "nonuniform"),
    "SQ8_uniform": ("QT_8bit_uniform", 8, "uniform"),
    "SQ4_uniform": ("QT_4bit_uniform", 4, "uniform"),
    "SQ8_direct": ("QT_8bit_direct", 8, "direct"),
    "SQfp16": ("QT_fp16", 16, "fp16"),
    "SQbf16": ("QT_bf16", 16, "bf16"),
}
_ALIASES = {v[0]: k for k, v in QTYPES.items()}  # "QT_8bit" -> "SQ8", ...


def _canonical_qtype(qtype) -> str:
    if isinstance(qtype, str):
        if qtype in QTYPES:
            return qtype
        if qtype in _ALIASES:
            return _ALIASES[qtype]
    raise InvalidInputError(
        f"unknown scalar quantizer type {qtype!r}; known types: {', '.join(QTYPES)} "
        f"(or FAISS's names {', '.join(_ALIASES)})")


@pytree_dataclass
class ScalarQuantizer:
    """Scalar quantizer codec. Arrays are pytree leaves; the rest is static.

    vmin, vdiff: float32 range of each component, shape (d,) for the per-dimension types,
    (1,) for the uniform ones and (0,) for the types that need no training.
    """

    vmin: jax.Array
    vdiff: jax.Array
    d: int = static()
    qtype: str = static(choices=QTYPES)
    is_trained: bool = static()

    # --- construction ----------------------------------------------------------------
    @classmethod
    def create(cls, d: int, qtype: str = "SQ8") -> "ScalarQuantizer":
        """An untrained quantizer (trained already for direct / fp16 / bf16)."""
        qtype = _canonical_qtype(qtype)
        d = int(d)
        if d <= 0:
            raise InvalidInputError(f"dimension must be positive, got {d}")
        kind = QTYPES[qtype][2]
        n_range = {"nonuniform": d, "uniform": 1}.get(kind, 0)
        return cls(vmin=jnp.zeros((n_range,), jnp.float32),
                   vdiff=jnp.zeros((n_range,), jnp.float32),
                   d=d, qtype=qtype, is_trained=n_range == 0)

    @property
    def kind(self) -> str:
        return QTYPES[self.qtype][2]

    @property
    def bits(self) -> int:
        return QTYPES[self.qtype][1]

    @property
    def faiss_qtype(self) -> str:
        return QTYPES[self.qtype][0]

    @property
    def code_size(self) -> int:
        return -(-self.d * self.bits // 8)

    def describe(self) -> str:
        return self.qtype

    # --- training (host level) -------------------------------------------------------
    def train(self, x, *, key=None) -> "ScalarQuantizer":
        """Learn the value ranges from x (n, d): FAISS's min-max statistic. `key` is
        accepted for the common codec interface; training is deterministic."""
        del key
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.d:
            raise InvalidInputError(
                f"training vectors must be (n, {self.d}), got shape {x.shape}")
        if x.shape[0] == 0:
            raise InvalidInputError("training needs at least one vector")
        if self.kind in ("direct", "fp16", "bf16"):
            return dataclasses.replace(self, is_trained=True)
        if not np.all(np.isfinite(x)):
            raise InvalidInputError("training vectors contain NaN or inf")
        if self.kind == "uniform":
            vmin = np.min(x).reshape(1)
            vmax = np.max(x).reshape(1)
        else:
            vmin = np.min(x, axis=0)
            vmax = np.max(x, axis=0)
        vdiff = (vmax - vmin).astype(np.float32)  # float32, as FAISS
        return dataclasses.replace(self, vmin=jnp.asarray(vmin, jnp.float32),
                                   vdiff=jnp.asarray(vdiff, jnp.float32), is_trained=True)

    def _require_trained(self):
        if not self.is_trained:
            raise NotTrainedError(f"ScalarQuantizer({self.qtype}) must be trained first")

    # --- encode / decode (traceable) --------------------------------------------------
    def encode(self, x) -> jax.Array:
        """(n, d) float -> (n, code_size) uint8. Jittable."""
        self._require_trained()
        x = jnp.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.d:
            raise InvalidInputError(f"vectors must be (n, {self.d}), got shape {x.shape}")
        x = x.astype(jnp.float32)
        kind, bits = self.kind, self.bits
        if kind == "fp16":
            return _u16_to_bytes(_encode_fp16(x))
        if kind == "bf16":
            return _u16_to_bytes(_encode_bf16(x))
        if kind == "direct":
            return jnp.clip(x, 0.0, 255.0).astype(jnp.uint8)
        safe = jnp.where(self.vdiff != 0, self.vdiff, 1.0)
        # XLA rewrites `a / broadcast(b)` into `a * broadcast(1 / b)`, which is not the
        # correctly rounded quotient FAISS computes (about 0.1% of 8-bit codes move by
        # one). A divisor that depends on x elementwise (NaN where x is NaN, where the
        # quotient is NaN anyway) is no broadcast, under jit, vmap or closure alike.
        safe = jnp.where(jnp.isnan(x), jnp.nan, safe)
        xi = jnp.where(self.vdiff != 0, jnp.clip((x - self.vmin) / safe, 0.0, 1.0), 0.0)
        xi = jnp.where(jnp.isnan(xi), 0.0, xi)
        if bits == 8:
            return (jnp.float32(255.0) * xi).astype(jnp.int32).astype(jnp.uint8)
        q = _floor_times_int(xi, (1 << bits) - 1)
        return pack_codes(q, 4) if bits == 4 else _pack6(q)

    def decode(self, codes) -> jax.Array:
        """(n, code_size) uint8 -> (n, d) float32. Jittable."""
        self._require_trained()
        codes = jnp.asarray(codes)
        if codes.dtype != jnp.uint8:
            raise InvalidDtypeError(f"codes must be uint8, got {codes.dtype}")
        if codes.ndim != 2 or codes.shape[1] != self.code_size:
            raise InvalidInputError(
                f"codes must be (n, {self.code_size}) uint8, got shape {codes.shape}")
        kind, bits = self.kind, self.bits
        if kind == "fp16":
            return jax.lax.bitcast_convert_type(_bytes_to_u16(codes), jnp.float16).astype(
                jnp.float32)
        if kind == "bf16":
            u = _bytes_to_u16(codes).astype(jnp.uint32) << 16
            return jax.lax.bitcast_convert_type(u, jnp.float32)
        if kind == "direct":
            return codes.astype(jnp.float32)
        if bits == 8:
            q = codes
        elif bits == 4:  # nibbles, low first: the packed sub-code layout of jann.ops.codes
            q = unpack_codes(codes, self.d, 4)
        else:
            q = _unpack6(codes, self.d)
        xi = (q.astype(jnp.float32) + 0.5) / jnp.float32((1 << bits) - 1)
        return self.vmin + xi * self.vdiff

    def reconstruct(self, x) -> jax.Array:
        """decode(encode(x))."""
        return self.decode(self.encode(x))

    def kernel_decode(self) -> KernelDecode | None:
        """How the IVF list-scan kernel reads these codes (`jann.ops.ivf_scan`): the 8-bit
        types only (decoded as `decode` does); None for the others."""
        if self.bits != 8:
            return None
        if self.kind == "direct":
            return KernelDecode("direct")
        return KernelDecode("sq8", vmin=self.vmin, vdiff=self.vdiff)


# --- helpers ----------------------------------------------------------------------------

def _floor_times_int(xi, m: int):
    """floor(xi * m) computed exactly (as in double) for xi in [0, 1] float32, m < 256.

    xi = mant * 2**-shift with an integer mantissa below 2**24, so xi * m = (mant * m) >>
    shift exactly, in uint32 (mant * m < 2**32).
    """
    u = jax.lax.bitcast_convert_type(xi, jnp.uint32)
    e = (u >> 23).astype(jnp.int32)
    mant = (u & 0x7FFFFF) | jnp.where(e > 0, jnp.uint32(0x800000), jnp.uint32(0))
    shift = 150 - jnp.maximum(e, 1)
    prod = mant * jnp.uint32(m)
    q = jnp.where(shift >= 32, jnp.uint32(0), prod >> jnp.minimum(shift, 31).astype(jnp.uint32))
    return q.astype(jnp.uint8)


def _pack6(q):
    """Four 6-bit values per 3 bytes, LSB first (FAISS `Codec6bit`)."""
    n, d = q.shape
    code_size = -(-d * 6 // 8)
    q = jnp.pad(q, ((0, 0), (0, -d % 4))).reshape(n, -1, 4)
    v0, v1, v2, v3 = (q[..., i] for i in range(4))
    b0 = v0 | (v1 << 6)
    b1 = (v1 >> 2) | (v2 << 4)
    b2 = (v2 >> 4) | (v3 << 2)
    return jnp.stack([b0, b1, b2], axis=-1).reshape(n, -1)[:, :code_size]


def _unpack6(codes, d):
    n, code_size = codes.shape
    groups = -(-d // 4)
    c = jnp.pad(codes, ((0, 0), (0, 3 * groups - code_size))).reshape(n, groups, 3)
    b0, b1, b2 = c[..., 0], c[..., 1], c[..., 2]
    v0 = b0 & 0x3F
    v1 = (b0 >> 6) | ((b1 & 0xF) << 2)
    v2 = (b1 >> 4) | ((b2 & 0x3) << 4)
    v3 = b2 >> 2
    return jnp.stack([v0, v1, v2, v3], axis=-1).reshape(n, -1)[:, :d]


def _u16_to_bytes(u):
    n, d = u.shape
    lo = (u & 0xFF).astype(jnp.uint8)
    hi = (u >> 8).astype(jnp.uint8)
    return jnp.stack([lo, hi], axis=-1).reshape(n, 2 * d)


def _bytes_to_u16(codes):
    n = codes.shape[0]
    c = codes.reshape(n, -1, 2).astype(jnp.uint16)
    return c[..., 0] | (c[..., 1] << 8)


def _encode_bf16(x):
    """FAISS `encode_bf16`: (bits + 0x8000) >> 16."""
    u = jax.lax.bitcast_convert_type(x, jnp.uint32)
    return ((u + jnp.uint32(0x8000)) >> 16).astype(jnp.uint16)


def _encode_fp16(x):
    """FAISS's software `encode_fp16` (F. Giesen's float_to_half_fast3 variant) in integer
    arithmetic: round to nearest with ties away from zero, overflow to inf, NaN to qNaN."""
    u = jax.lax.bitcast_convert_type(x, jnp.uint32)
    sign = u & jnp.uint32(0x80000000)
    f = u ^ sign
    f32_inf = jnp.uint32(255 << 23)
    special = jnp.where(f > f32_inf, jnp.uint32(0x7E00), jnp.uint32(0x7C00))
    # fscale = float(f & ~0xfff) * 2**-112, then min(fscale, float((31 << 23) - 0x1000)).
    e = (f >> 23).astype(jnp.int32)
    trunc = f & jnp.uint32(0xFFFFF000)
    normal = trunc - jnp.uint32(112 << 23)
    # Denormal result: mantissa * 2**(e_eff - 150 - 112) on the 2**-149 grid, rounded to
    # nearest even (the float multiply's rounding).
    mant = (trunc & jnp.uint32(0x7FFFFF)) | jnp.where(e > 0, jnp.uint32(0x800000),
                                                        jnp.uint32(0))
    sh = jnp.clip(113 - jnp.maximum(e, 1), 1, 31).astype(jnp.uint32)
    q = mant >> sh
    rem = mant & ((jnp.uint32(1) << sh) - 1)
    half = jnp.uint32(1) << (sh - 1)
    q = q + ((rem > half) | ((rem == half) & ((q & 1) == 1))).astype(jnp.uint32)
    q = jnp.where(113 - jnp.maximum(e, 1) > 31, jnp.uint32(0), q)
    fscale = jnp.where(e > 112, normal, q)
    fscale = jnp.minimum(fscale, jnp.uint32((31 << 23) - 0x1000))
    o = jnp.where(f < f32_inf, (fscale + jnp.uint32(0x1000)) >> 13, special)
    return (o | (sign >> 16)).astype(jnp.uint16)
