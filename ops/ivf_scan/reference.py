"""The IVF list scan's contract: each query's k best rows among the inverted lists it
probes, the lists stored in CSR order (`offsets`), and its oracle `ivf_scan_reference`
(every row's key, masked to the probed lists, then `lax.top_k`).

Row codes decoded on the fly (`decode=`):
- "float": raw vectors stored as float32, float16 or bfloat16 (IVF-Flat), upcast;
- "sq8": 8-bit scalar codes, vmin + ((code + 0.5) / 255) * vdiff per component (or one
  range for all), the float operations of `ScalarQuantizer.decode` in the same order;
- "direct": 8-bit codes taken as the values (SQ8_direct);
- "pq": product-quantizer codes (8-bit bytes, or 4-bit nibbles, as `jann.ops.codes`
  packs them), scored by look-up tables instead of decoding (ADC, FAISS GPU's IVFPQ):
  the key of a row is base + bias[row] + sum over sub-spaces m of
  tables[q, m, code_m] + list_tables[l, m, code_m]. For l2 by residual, with y the
  decoded residual and bias ||y||^2, ||q - c - y||^2 = ||q - c||^2 + ||y||^2
  - 2 q.y + 2 c.y: tables hold -2 q_m.C_m (one per query, shared by all its lists) and
  list_tables 2 c_m.C_m (one per list, shared by all queries); for ip, and for l2 without
  residuals, tables hold -q_m.C_m or -2 q_m.C_m and there are no list tables. The
  kernel reads the per-query table through the cache, one gather per sub-space and row.

Keys (smaller is better): l2: ||r||^2 + bias[row] - 2 r.x, r = q - c_l (by_residual) or q
and bias the squared norm of the decoded row; ip: -(q.x) - q.c_l (by_residual) + bias
with bias 0. Rows that may not be returned (filtered, past the count) have bias +inf.
Ties go to the lower storage row (lexicographic order, as the other kernels).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..codes import unpack_codes

__all__ = ["DECODES", "METRICS", "decoder", "ivf_scan_reference"]

DECODES = ("float", "sq8", "direct", "pq")
METRICS = ("l2", "ip")


def decoder(decode: str):
    """dequantize(codes, vmin, vdiff) -> float32 rows for the decodes other than "pq"
    (the kernel applies it to (block_n, block_d) tiles, the oracle to every row)."""
    def dequantize(codes, vmin, vdiff):
        if decode == "sq8":
            xi = (codes.astype(jnp.float32) + 0.5) / jnp.float32(255)
            return vmin + xi * vdiff
        return codes.astype(jnp.float32)
    return dequantize


def ivf_scan_reference(q, lists, offsets, payload, bias, centroids, k: int, metric: str,
                       *, by_residual: bool, decode: str = "float", vmin=None, vdiff=None,
                       tables=None, list_tables=None, nbits: int = 8):
    """The kernel's contract on the full (nq, N) key matrix (for tests): (keys (nq, k)
    ascending, rows (nq, k)), (+inf, -1) where fewer than k rows qualify."""
    nlist, n = offsets.shape[0] - 1, payload.shape[0]
    d = q.shape[1]
    vmin = jnp.zeros((d,), jnp.float32) if vmin is None else vmin
    vdiff = jnp.ones((d,), jnp.float32) if vdiff is None else vdiff
    row_list = (jnp.searchsorted(offsets, jnp.arange(n), side="right") - 1).clip(0, nlist - 1)
    c = centroids[row_list]                                                  # (N, d)
    if decode == "pq":
        codes = unpack_codes(payload, tables.shape[1], nbits)                # (N, M)
        m = jnp.arange(tables.shape[1])
        looked = jnp.sum(tables[:, m[None, :], codes], -1)                   # (nq, N)
        if list_tables is not None:
            looked = looked + jnp.sum(list_tables[row_list[:, None], m[None, :], codes], -1)
        if metric == "l2":
            r = q[:, None, :] - c[None] if by_residual else q[:, None, :] + 0 * c[None]
            base = jnp.sum(r * r, -1)
        else:
            base = -jnp.einsum("qd,nd->qn", q, c) if by_residual else 0.0
        keys = base + bias[None, :] + looked
    else:
        x = decoder(decode)(payload, vmin, vdiff)                            # (N, d)
        keys = _decoded_keys(q, x, c, bias, metric, by_residual)
    return _masked_top_k(keys, row_list, lists, offsets, k)


def _decoded_keys(q, x, c, bias, metric, by_residual):
    if metric == "l2":
        r = q[:, None, :] - c[None] if by_residual else q[:, None, :] + jnp.zeros_like(c)
        return jnp.sum(r * r, -1) + bias[None, :] - 2 * jnp.sum(r * x[None], -1)
    keys = -jnp.einsum("qd,nd->qn", q, x) + bias[None, :]
    return keys - jnp.einsum("qd,nd->qn", q, c) if by_residual else keys


def _masked_top_k(keys, row_list, lists, offsets, k):
    n = keys.shape[1]
    probed = jnp.any(row_list[None, :, None] == lists[:, None, :], axis=-1)
    in_list = jnp.arange(n) < offsets[-1]
    keys = jnp.where(probed & in_list[None, :] & ~jnp.isnan(keys), keys, jnp.inf)
    take = min(k, n)
    neg, rows = jax.lax.top_k(-keys, take)
    keys, rows = -neg, jnp.where(jnp.isposinf(-neg), -1, rows)
    pad = ((0, 0), (0, k - take))
    return (jnp.pad(keys, pad, constant_values=jnp.inf),
            jnp.pad(rows, pad, constant_values=-1))
