"""Fused distance + top-k (exact k-NN, L2 / inner product) as a Pallas kernel.

Grid over blocks of `block_q` queries; each program walks the whole database in tiles of
`block_n` rows, computes the (block_q, block_n) keys with one matmul and folds them into a
running top-k held in registers (`topk.pallas.scan_top_k`), so the (nq, N) distance
matrix never reaches memory. Storage may be float32, float16 or bfloat16: tiles are
upcast in the kernel and products accumulate in float32, as `knn.xla.knn_scan` does.

The vector dimension is walked in chunks of `block_d` columns (an inner loop
accumulating the (block_q, block_n) products), so the tile in registers and shared memory is
(block_n, block_d) whatever d is: 768-d and 4096-d embeddings compile on every Ampere or
newer GPU (`plans` sizes the blocks).

Keys are those of the XLA path (`knn.xla`, metrics ranked by one matmul): ||x||^2 - 2 q.x
for l2 (||q||^2, constant per query, is added to the k survivors), -q.x for inner
products, +inf for rows that may not be returned (folded into one per-row bias, so
validity costs no extra pass).

The database is read in place with contiguous masked loads (rows past the end and
columns past d read zero; queries are zero-padded to whole chunks), so neither the ragged
tail nor d forces a padded copy of xb.

`knn.reference.knn_reference` (the full matrix, then `lax.top_k`) is the oracle.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from ..distances import squared_norms
from ..errors import InvalidInputError
from ..plans import plan_knn
from ..topk.pallas import ScanConfig, load_rows, scan_call

__all__ = ["METRICS", "knn_pallas"]

METRICS = ("l2", "ip")


def _key_tile_maker(d: int, block_d: int, scale: float):
    n_chunks = -(-d // block_d)

    def make(q_refs, db_refs):
        (q_ref,), (xb_ref, bias_ref) = q_refs, db_refs

        def key_tile(start, in_range):
            n_rows = in_range.shape[0]

            def chunk(c, acc):
                col = c * block_d
                q = q_ref[:, pl.ds(col, block_d)]
                x = load_rows(xb_ref, start, n_rows, in_range, (col, block_d)).astype(
                    jnp.float32)
                return acc + jax.lax.dot_general(
                    q, x, (((1,), (1,)), ((), ())), precision=jax.lax.Precision.HIGHEST,
                    preferred_element_type=jnp.float32)

            dots = jax.lax.fori_loop(0, n_chunks, chunk,
                                     jnp.zeros((q_ref.shape[0], n_rows), jnp.float32))
            bias = load_rows(bias_ref, start, n_rows, in_range, other=jnp.inf)
            return bias[None, :] + scale * dots

        return key_tile
    return make


def knn_pallas(xq, xb, k: int, metric: str = "l2", *, xb_sqnorms=None, xb_valid=None,
               config: ScanConfig | None = None, interpret: bool = False):
    """k best rows of xb (n, d) for each query of xq (nq, d); traceable, no validation.

    metric: "l2" (squared) or "ip" (cosine: normalise first, then "ip"). xb_sqnorms: cached
    squared norms for l2; xb_valid: (n,) bool rows that may be returned. Returns
    (distances (nq, k) float32, rows (nq, k) int32) as `knn.xla.knn_scan`: ascending for l2,
    descending for ip, +inf / -inf and -1 where fewer than k rows qualify. config: launch
    parameters, `plan_knn(d, k, dtype)` when None. interpret=True runs the kernel body
    through the Pallas interpreter (any backend; for tests).
    """
    if metric not in METRICS:
        raise InvalidInputError(f"knn_pallas supports {METRICS}, got {metric!r}")
    nq, d = xq.shape
    n = xb.shape[0]
    config = plan_knn(d, k, xb.dtype) if config is None else config
    q = xq.astype(jnp.float32)
    if n == 0:
        keys = jnp.full((nq, k), jnp.inf, jnp.float32)
        rows = jnp.full((nq, k), -1, jnp.int32)
    else:
        if metric == "l2":
            bias = squared_norms(xb) if xb_sqnorms is None else xb_sqnorms.astype(jnp.float32)
        else:
            bias = jnp.zeros((n,), jnp.float32)
        if xb_valid is not None:
            bias = jnp.where(xb_valid, bias, jnp.inf)
        # Queries are zero-padded to whole chunks; the database is read in place, its
        # columns past d masked to zero in the load.
        bd = config.block_d
        d_pad = -(-d // bd) * bd
        keys, rows = scan_call(
            _key_tile_maker(d, bd, -2.0 if metric == "l2" else -1.0),
            [jnp.pad(q, ((0, 0), (0, d_pad - d)))], [xb, bias], n, k, config,
            interpret=interpret, name=f"jann_knn_{metric}")
    if metric == "l2":
        return jnp.maximum(keys + squared_norms(q)[:, None], 0.0), rows
    return -keys, rows
