"""IVF list scan as a Pallas kernel: each query scans only the inverted lists it probes.

One program per query. For each of its probed lists (list ids from the coarse quantizer;
the sentinel `nlist` marks an unused probe) it walks the list's rows
[offsets[l], offsets[l + 1]) in tiles of `block_n` rows (d in chunks of `block_d`
columns, so the tile does not grow with d), decodes them in the kernel, computes their
keys against the query and folds them into the running top-k held in registers
(`topk.pallas.fold_tile`). The work is the probed lists' real lengths: a short list is
one short loop, an empty list or an unused probe nothing; no list is padded.

Rows are decoded (raw floats, 8-bit scalar codes) or scored by look-up tables (PQ codes)
as `ivf_scan.reference` says, which also defines the keys; `ivf_scan_reference` is the
oracle. The XLA path is the caller's: `jann.ivf.IVFIndex.scan` (list-major), which the
tests check the kernel against through `IVFIndex.search_core(backend=...)`; the choice
between them is `jann.ops.ivf_scan.ivf_search`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from ..adc.pallas import load_sub_code
from ..errors import InvalidInputError
from ..plans import plan_ivf
from ..topk.pallas import ScanConfig, fold_tile, load_rows, multipass_top_k, next_pow2
from .reference import DECODES, METRICS, decoder

__all__ = ["ivf_scan_pallas"]


def ivf_scan_pallas(q, lists, offsets, payload, bias, centroids, k: int, metric: str, *,
                    by_residual: bool, decode: str = "float", vmin=None, vdiff=None,
                    tables=None, list_tables=None, nbits: int = 8,
                    config: ScanConfig | None = None, interpret: bool = False):
    """Each query's k best rows among the lists it probes; traceable, no validation.

    q: (nq, d) float32 prepared queries; lists: (nq, P) int32 probed list ids (nlist =
    unused); offsets: (nlist + 1,) int32 CSR list bounds; payload: (N, d) codes (float
    vectors, or uint8 for "sq8" / "direct"); bias: (N,) float32 (`ivf_scan.reference`);
    centroids: (nlist, d) float32; vmin / vdiff: (d,) or (1,) ranges for "sq8"; for "pq",
    payload (N, code_size) uint8 codes of `nbits`-bit sub-codes, tables (nq, M, 2**nbits)
    and list_tables (nlist, M, 2**nbits) or None, as `ivf_scan.reference` says. Returns
    (keys (nq, k) float32 ascending, rows (nq, k) int32 storage rows), (+inf, -1) where
    missing.
    """
    if metric not in METRICS:
        raise InvalidInputError(f"ivf_scan_pallas supports {METRICS}, got {metric!r}")
    if decode not in DECODES:
        raise InvalidInputError(f"decode must be one of {DECODES}, got {decode!r}")
    nq, d = q.shape
    nlist, n = offsets.shape[0] - 1, payload.shape[0]
    if nq == 0 or n == 0 or lists.shape[1] == 0:
        return (jnp.full((nq, k), jnp.inf, jnp.float32), jnp.full((nq, k), -1, jnp.int32))
    config = plan_ivf(d, k) if config is None else config
    bn, bd = config.block_n, config.block_d
    n_chunks = -(-d // bd)
    d_pad = n_chunks * bd
    # Queries and the sq8 ranges zero-padded to whole chunks (the payload and centroids
    # are read in place, their columns past d masked to zero).
    ranges = jnp.stack([jnp.broadcast_to(jnp.zeros((d,), jnp.float32) if vmin is None
                                         else vmin.astype(jnp.float32), (d,)),
                        jnp.broadcast_to(jnp.ones((d,), jnp.float32) if vdiff is None
                                         else vdiff.astype(jnp.float32), (d,))])
    ranges = jnp.pad(ranges, ((0, 0), (0, d_pad - d)))
    dequantize = decoder(decode)
    if decode == "pq":
        n_sub, ksub = tables.shape[1], tables.shape[2]
        # (columns padded to a power of two, as Triton blocks are)
        flat_tables = jnp.pad(tables.astype(jnp.float32).reshape(nq, n_sub * ksub),
                              ((0, 0), (0, next_pow2(n_sub * ksub) - n_sub * ksub)))
        flat_lists = (jnp.zeros((1, 1), jnp.float32) if list_tables is None else
                      list_tables.astype(jnp.float32).reshape(nlist, n_sub * ksub))
    else:  # placeholders: the kernel takes the same refs for every decode
        flat_tables, flat_lists = jnp.zeros((nq, 1), jnp.float32), jnp.zeros((1, 1))
    # Triton blocks are powers of two: probes padded with the unused-probe sentinel.
    q = jnp.pad(q.astype(jnp.float32), ((0, 0), (0, d_pad - d)))
    n_probe = next_pow2(lists.shape[1])
    lists = jnp.pad(lists.astype(jnp.int32), ((0, 0), (0, n_probe - lists.shape[1])),
                    constant_values=nlist)

    def kernel(q_ref, lists_ref, after_key_ref, after_row_ref, tables_ref, offsets_ref,
               payload_ref, bias_ref, centroids_ref, ranges_ref, list_tables_ref, keys_ref,
               rows_ref):
        def looked_up(start, in_range, lst):
            """(1, bn) sums of the table entries of the rows' sub-codes ("pq")."""
            first = jnp.zeros((1, 1), jnp.int32)
            lst = jnp.full((1, 1), lst, jnp.int32)
            def sub_space(m, acc):  # a loop, as in `pq`: compile time flat in M
                code = load_sub_code(payload_ref, start, bn, in_range, m, nbits)
                entry = m * ksub + code[None, :]
                acc = acc + tables_ref[first, entry]
                if list_tables is not None:
                    acc = acc + list_tables_ref[lst, entry]
                return acc

            return jax.lax.fori_loop(0, n_sub, sub_space, jnp.zeros((1, bn), jnp.float32))

        one_row = jnp.ones((1,), jnp.bool_)

        def centroid_chunk(lst, col):
            return load_rows(centroids_ref, lst, 1, one_row, (col, bd))            # (1, bd)

        def residual(lst, col):
            """(1, bd) chunk of the vector the rows are scored against: q - c_l (l2 by
            residual), else q (no centroid read)."""
            qv = q_ref[:, pl.ds(col, bd)]
            return qv - centroid_chunk(lst, col) if metric == "l2" and by_residual else qv

        def base_of(lst):
            """The per-list constant of the keys: ||q - c||^2 or ||q||^2 (l2), -q.c (ip
            by residual), 0."""
            if metric != "l2" and not by_residual:
                return jnp.float32(0)

            def chunk(c, acc):
                r = residual(lst, c * bd)
                if metric == "l2":
                    return acc + jnp.sum(r * r)
                return acc - jnp.sum(r * centroid_chunk(lst, c * bd))

            return jax.lax.fori_loop(0, n_chunks, chunk, jnp.float32(0))

        after_key, after_row = after_key_ref[...], after_row_ref[...]
        lane = jax.lax.broadcasted_iota(jnp.int32, (bn,), 0)
        scale = -2.0 if metric == "l2" else -1.0

        def probe(p, buf):
            lst = lists_ref[0, p]
            used = lst < nlist
            safe = jnp.clip(lst, 0, nlist - 1)
            start = offsets_ref[safe]
            end = jnp.where(used, offsets_ref[safe + 1], start)
            base = base_of(safe)

            def tile(t, buf):
                row0 = start + t * bn
                rows = row0 + lane
                in_range = rows < end
                bias = load_rows(bias_ref, row0, bn, in_range, other=jnp.inf)
                if decode == "pq":
                    keys = base + bias[None, :] + looked_up(row0, in_range, safe)
                else:
                    def chunk(c, dots):
                        col = c * bd
                        r = residual(safe, col)
                        vmin = ranges_ref[pl.ds(0, 1), pl.ds(col, bd)]
                        vdiff = ranges_ref[pl.ds(1, 1), pl.ds(col, bd)]
                        x = dequantize(load_rows(payload_ref, row0, bn, in_range, (col, bd)),
                                       vmin, vdiff)                            # (bn, bd)
                        return dots + jnp.sum(x * r, axis=1)

                    dots = jax.lax.fori_loop(0, n_chunks, chunk, jnp.zeros((bn,), jnp.float32))
                    keys = (base + bias + scale * dots)[None, :]
                keys = jnp.where(jnp.isnan(keys), jnp.inf, keys)
                keep = in_range[None, :] & (
                    (after_key[:, None] < keys)
                    | ((after_key[:, None] == keys) & (after_row[:, None] < rows[None, :])))
                return fold_tile(*buf, jnp.where(keep, keys, jnp.inf), rows)

            return jax.lax.fori_loop(0, (end - start + bn - 1) // bn, tile, buf)

        init = (jnp.full(keys_ref.shape, jnp.inf, jnp.float32),
                -1 - jax.lax.broadcasted_iota(jnp.int32, keys_ref.shape, 1))
        keys, rows = jax.lax.fori_loop(0, n_probe, probe, init)
        keys_ref[...] = keys
        rows_ref[...] = rows

    def per_query(shape):
        rest = tuple(shape[1:])
        return pl.BlockSpec((1,) + rest, lambda i: (i,) + (0,) * len(rest))

    def run_pass(k_pad, after_key, after_row):
        out = per_query((nq, k_pad))
        return pl.pallas_call(
            kernel,
            grid=(nq,),
            in_specs=[per_query(q.shape), per_query(lists.shape), per_query((nq,)),
                      per_query((nq,)), per_query(flat_tables.shape)]
            + [pl.no_block_spec] * 6,
            out_specs=[out, out],
            out_shape=[jax.ShapeDtypeStruct((nq, k_pad), jnp.float32),
                       jax.ShapeDtypeStruct((nq, k_pad), jnp.int32)],
            compiler_params=None if interpret else config.compiler_params(),
            interpret=interpret,
            name=f"jann_ivf_scan_{decode}_{metric}",
        )(q, lists, after_key, after_row, flat_tables,
          offsets.astype(jnp.int32), payload, bias.astype(jnp.float32),
          centroids.astype(jnp.float32), ranges, flat_lists)

    return multipass_top_k(run_pass, nq, k, config.max_k)
