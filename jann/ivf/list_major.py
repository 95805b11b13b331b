"""The list-major scan of an IVF index: large batches, and range search.

Search order: list-major. The (query, probed list) pairs are grouped by list
(`bucket_sort`, lists ranked by length); each work item takes up to `Qc` queries probing
one list, decodes the list's first `Lc` rows and computes the (Qc, Lc) score block with
one matmul (float32 accumulation). A list is thus read once per query batch instead of
once per query, and the scan is BLAS-sized work. With one query per group (Qc = 1) this
is the query-major order. The loop runs a data-dependent number
of steps (`lax.while_loop`) of `ITEMS_PER_STEP` items each, so the work follows the
lists actually probed, not a padded maximum, inside jit too.

Selection: a pair's first-chunk scores are kept whole (no per-pair top-k: XLA's CPU
top_k costs ~0.8 us per row whatever its length, more than the matmul of a short row);
rows past Lc (long lists) are folded into k running best slots. The candidates are
written in list order as the items produce them (one contiguous block per step), and
each query's top-k is selected once, in place, over its nprobe x (Lc + k) candidates
(`smallest_k_gathered`: block minima, then the best k blocks).

Shape rule (measured on sift-textures IVF2048,Flat and debian-minilm IVF1024,{Flat,
PQ48}, 2 threads): Qc ~ the mean number of queries per probed list (pairs / nlist, a
power of two, at most 256), Lc ~ the mean list length (a power of two, 32-512): larger
Lc (256 for 98-row lists) wasted more matmul than the fewer folds saved, and so did
half of it. Qc is halved where items compute their products rows first
(`chunk_scores`) and the halved group still has 8 to Lc / 8 queries, or where the
group would be 2 (then 1). Measured after the rows-first change (jann.search QPS, 2
threads, AVX2, same-process A/B, Qc before -> after): sift-textures IVF2048,Flat
(nprobe 45) 2000 queries, 32 -> 16: 4.5k -> 5.4k (IVF2048,SQ8 4.6k -> 5.5k);
fashion-mnist IVF1024,Flat (8) 2000 queries, 16 -> 8: 7.4k -> 8.1k, 256 queries,
2 -> 1: 2.4k -> 2.7k and 3.7k -> 5.6k in two runs; debian-minilm IVF1024,Flat (91)
256 queries, 16 -> 8: 1.59k -> 1.95k. Halving where the rule does not: sift 256
queries 8 -> 4 0.95x (SQ8 0.92x), debian 2000 queries 128 -> 64 0.84x, debian
IVF1024,PQ48 2000 queries 8 -> 4 0.95x.

Batches pass through in blocks of at most `SCAN_QUERY_BLOCK` queries so that a padded
batch's empty blocks are skipped.

PQ codes: a work item with many queries decodes its Lc codes once and scores them for
all Qc queries with one matmul against the residuals (one decode serves Qc queries, no
table to build); with at most `MAX_TABLE_QUERY_GROUP` queries (small batches) it scores
them by look-up in per-query tables instead (FAISS's ADC; for L2 by residual
||q - c - y||^2 = ||q - c||^2 + ||y||^2 + 2 c.y - 2 q.y, the c.y term from the list's
centroid table). Measured figures are in `uses_tables`; `jann.ops.adc` is the ADC scan
with the tables on chip for GPUs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jann.ops import distances as dist_ops
from jann.ops.codes import unpack_codes
from jann.ops.knn import map_query_blocks
from jann.ops.sorting import bucket_sort, prefix_sum, stable_argsort
from jann.ops.topk import merge_smallest, smallest_k_gathered

# Work-item shape of the list-major scan: queries per group ~ the mean number of queries
# probing a list, rows per chunk ~ the mean list length (times these factors), clipped.
MAX_QUERY_GROUP = 256
MIN_ROW_CHUNK, MAX_ROW_CHUNK = 32, 512
QUERY_GROUP_FACTOR = 1.0
MIN_HALVED_QUERY_GROUP = 8
ROW_CHUNK_FACTOR = 1.0
# Work items one scan step runs together (vmapped): a step of one item spent most of its
# time in per-op overhead (IVF1024,PQ56 on Fashion-MNIST, 4096 queries, nprobe 8: 0.74 s
# with one item per step, 0.40 s with 4 or 16; 64 was slower again; sift-textures
# IVF2048,Flat, 2000 queries, nprobe 45: 16 beat 8 and 32).
ITEMS_PER_STEP = 16
# Lists are ordered by their number of row chunks, up to this many, for the scan's steps.
MAX_ORDERED_CHUNKS = 1 << 16
# The scan keeps every (query, probed list) pair's candidates, (nq x nprobe x width) x 4
# bytes: a search whose candidates would pass this bound scans its queries in blocks that
# fit (each block reads its probed lists again, so blocks are as large as the bound allows).
MAX_SCAN_BYTES = 512 << 20
# Product-quantizer codes are scored by look-up tables when a work item has at most this
# many queries, decoded and multiplied otherwise (`uses_tables`).
MAX_TABLE_QUERY_GROUP = 4
# The scan takes queries in blocks of at most this many, so that the blocks of a padded
# batch past its real queries are skipped, and the candidate buffers of 10k queries (each
# page of them faulted in afresh per call) are not made for 16384.
SCAN_QUERY_BLOCK = 2048


def _pow2_near(x: float) -> int:
    return 1 << max(0, int(round(np.log2(max(x, 1.0)))))


def scan_shape(index, nq: int, npb: int, k: int) -> dict:
    """Static shape of `scan` for nq queries probing npb lists each (see the rule in
    the module docstring)."""
    pairs = nq * npb
    row_chunk = int(np.clip(_pow2_near(ROW_CHUNK_FACTOR * index.capacity / index.nlist),
                            MIN_ROW_CHUNK, MAX_ROW_CHUNK))
    row_chunk = max(1, min(row_chunk, index.capacity))
    query_group = int(min(MAX_QUERY_GROUP,
                          _pow2_near(QUERY_GROUP_FACTOR * pairs / index.nlist)))
    halved = _pow2_near(0.5 * pairs / index.nlist)
    if MIN_HALVED_QUERY_GROUP <= halved <= row_chunk // 8 or query_group == 2:
        query_group = halved
    # A pair's candidates: the first row chunk whole, then the k best of the list's
    # other chunks, padded to whole 32-column blocks for the two-stage selection.
    extra = -(-(row_chunk + k) // 32) * 32 - row_chunk
    return dict(query_group=query_group, row_chunk=row_chunk, extra=extra,
                width=row_chunk + extra, pairs=pairs,
                bytes_per_query=npb * (row_chunk + extra + k) * 4)


def scan(index, q, lists, k: int, selector=None):
    """Top-k over the given probed lists (nq, nprobe) of prepared queries q."""
    nq, npb = lists.shape
    similarity = dist_ops.is_similarity(index.metric)
    shape = scan_shape(index, nq, npb, k)
    qg, rc, extra, width, pairs = (shape[f] for f in (
        "query_group", "row_chunk", "extra", "width", "pairs"))
    if not index.capacity:
        return (jnp.full((nq, k), -jnp.inf if similarity else jnp.inf, jnp.float32),
                jnp.full((nq, k), -1, index.ids.dtype))
    list_sizes = jnp.diff(index.offsets)
    r_chunks = (list_sizes + rc - 1) // rc
    # Lists are scanned with the most row chunks first, so that the items of a step
    # (vmapped: each runs as many chunk iterations as the longest) have alike lists;
    # the pairs are sorted by that rank, so the items' queries follow in scan order.
    order = stable_argsort(jnp.maximum(MAX_ORDERED_CHUNKS - r_chunks, 0),
                           MAX_ORDERED_CHUNKS + 1)
    rank = jnp.zeros((index.nlist + 1,), jnp.int32).at[order].set(
        jnp.arange(index.nlist, dtype=jnp.int32)).at[index.nlist].set(index.nlist)
    lims, perm = bucket_sort(rank[lists].reshape(pairs), index.nlist)
    q_chunks = (jnp.diff(lims) + qg - 1) // qg
    item_end = prefix_sum(q_chunks)
    n_items = item_end[-1]

    tables = index.codec.kernel_decode().ip_tables(q) if uses_tables(index, qg) else None

    def item(w):
        o = jnp.minimum(jnp.searchsorted(item_end, w, side="right", method="scan_unrolled"),
                        index.nlist - 1)
        lst = order[o]
        pos = lims[o] + (w - item_end[o] + q_chunks[o]) * qg
        query = perm[jnp.clip(pos + jnp.arange(qg), 0, pairs - 1)] // npb
        qv = q[query]
        q_tables = None if tables is None else (tables, query)

        def keyed(c):
            scores, first, row_ok = chunk_scores(index, 
                lst, qv, index.offsets[lst] + c * rc, rc, selector, q_tables)
            scores = -scores if similarity else scores
            return jnp.where(row_ok[None, :], scores, jnp.inf), first

        # The first chunk's scores are kept whole; later chunks of a long list are
        # folded into k running best slots.
        first_scores, _ = keyed(0)

        def fold(c, best):
            scores, first = keyed(c)
            rows = jnp.broadcast_to(first + jnp.arange(rc, dtype=jnp.int32), scores.shape)
            return merge_smallest(*best, scores, rows, k)

        best = (jnp.full((qg, k), jnp.inf, jnp.float32), jnp.full((qg, k), -1, jnp.int32))
        best_d, best_rows = jax.lax.fori_loop(
            1, jnp.where(w < n_items, r_chunks[lst], 0), fold, best)
        pos = jnp.where(w < n_items, pos, pairs)
        padding = jnp.full((qg, extra - k), jnp.inf, jnp.float32)
        return pos, jnp.concatenate([first_scores, best_d, padding], 1), best_rows

    def body(step, out):
        # The step's items cover consecutive sorted pairs from its first item's: their
        # rows are gathered into one block written in place (the rows past an item's
        # pairs are overwritten by the next item's, or lie past all pairs).
        pos, scores, rows = jax.vmap(item)(step * ITEMS_PER_STEP +
                                           jnp.arange(ITEMS_PER_STEP))
        at = pos[0] + jnp.arange(ITEMS_PER_STEP * qg)
        which = jnp.searchsorted(pos, at, side="right", method="compare_all") - 1
        which = jnp.clip(which, 0, ITEMS_PER_STEP - 1)
        row = jnp.clip(at - pos[which], 0, qg - 1)
        return tuple(jax.lax.dynamic_update_slice_in_dim(o, block[which, row], pos[0], 0)
                     for o, block in zip(out, (scores, rows)))

    # pairs + one step's rows, so that no write is moved back from the end; the last
    # row is +inf, the candidates of the probes that scan nothing
    out = (jnp.zeros((pairs + ITEMS_PER_STEP * qg + 1, width), jnp.float32).at[-1].set(
        jnp.inf), jnp.zeros((pairs + ITEMS_PER_STEP * qg, k), jnp.int32))
    sorted_scores, sorted_rows = jax.lax.fori_loop(
        0, (n_items + ITEMS_PER_STEP - 1) // ITEMS_PER_STEP, body, out)
    at = jnp.zeros((pairs,), jnp.int32).at[perm].set(jnp.arange(pairs, dtype=jnp.int32))
    at = jnp.where(lists < index.nlist, at.reshape(nq, npb), sorted_scores.shape[0] - 1)
    values, cols = smallest_k_gathered(sorted_scores, at, k)
    probe, col = jnp.maximum(cols, 0) // width, jnp.maximum(cols, 0) % width
    lst = jnp.minimum(jnp.take_along_axis(lists, probe, 1), index.nlist - 1)
    first_rows = jnp.minimum(index.offsets[lst], index.capacity - rc) + col
    folded_rows = sorted_rows[jnp.minimum(jnp.take_along_axis(at, probe, 1), pairs - 1),
                              jnp.clip(col - rc, 0, k - 1)]
    rows = jnp.clip(jnp.where(col < rc, first_rows, folded_rows), 0, index.capacity - 1)
    ids = jnp.where(cols < 0, -1, index.ids[rows])
    return (-values if similarity else values), ids


def scan_in_blocks(index, q, lists, k: int, selector=None, n_queries=None):
    """`scan` over blocks of queries small enough that their candidates fit
    MAX_SCAN_BYTES (blocks past n_queries, a padded batch's, are skipped)."""
    per_query = scan_shape(index, q.shape[0], lists.shape[1], k)["bytes_per_query"]
    block = min(SCAN_QUERY_BLOCK,
                1 << max(4, (MAX_SCAN_BYTES // per_query).bit_length() - 1))
    if q.shape[0] <= block:
        return scan(index, q, lists, k, selector)
    return map_query_blocks(lambda b: scan(index, *b, k, selector), (q, lists), block,
                            n_queries)


def uses_tables(index, query_group: int) -> bool:
    """Score product-quantizer codes by look-up tables when few queries share a work
    item: decoding a row costs d gathers however few queries read it, a look-up M
    per query. Measured (2 threads, jann.search QPS, tables vs decoding):
    debian-minilm IVF1024,PQ48, nprobe 6: 1 query per call 1.8k vs 0.66k, 16 queries
    8.4k vs 3.1k, 256 (2 per item) 8.2k vs 6.1k; 2000 queries (16 per item) 7.4k vs
    21k. sift-textures IVF2048,PQ16, nprobe 11: 1.4k vs 1.2k at one query, 10k vs 21k
    at 2000."""
    decode = index.codec.kernel_decode()
    return decode is not None and decode.kind == "pq" and \
        query_group <= MAX_TABLE_QUERY_GROUP


def chunk_scores(index, lst, qv, start, row_chunk: int, selector, tables=None):
    """Scores (Qc, row_chunk) of prepared queries qv against the stored rows from
    `start` on that belong to list lst (squared distances for l2, similarities for
    ip), the block's first storage row, and which of its rows count. The block is
    moved back to end at the capacity when it would pass it.

    tables: for product-quantizer codes, (the (nq, M, ksub) inner-product tables of all
    queries, which of them are qv's): the rows are then scored by look-up (FAISS's
    ADC) instead of decoded and multiplied (see `uses_tables`)."""
    first = jnp.minimum(start, index.capacity - row_chunk)
    rows = first + jnp.arange(row_chunk)
    row_ok = (rows >= start) & (rows < index.offsets[lst + 1])
    codes = jax.lax.dynamic_slice_in_dim(index.payload, first, row_chunk)
    norms = jax.lax.dynamic_slice_in_dim(index.norms, first, row_chunk)
    if selector is not None:
        row_ok &= selector(jax.lax.dynamic_slice_in_dim(index.ids, first, row_chunk))
    centroid = index.centroids[jnp.minimum(lst, index.nlist - 1)]
    # a work item of at most half as many queries as rows: the rows as the matmul's left
    # operand (`dist_ops.dot`). jann.search QPS, 2 threads, AVX2, same process A/B:
    # 256 queries a call, IVF-Flat: sift-textures (nprobe 45) 3.4k -> 4.0k, debian-minilm
    # (91) 1.25k -> 1.6k, fashion-mnist (8) 1.6k -> 3.6k; sift IVF2048,SQ8 3.5k -> 4.3k;
    # 2000 queries: fashion 5.0k -> 7.5k, sift and debian within noise; sift
    # IVF2048,PQ16 (decoded) at 2000 / 8000: 11.8k -> 12.7k, 12.6k -> 14.3k.
    rows_first = 2 * qv.shape[0] <= row_chunk
    if tables is not None:
        scores = looked_up_scores(index, qv, codes, norms, centroid, tables)
    elif index.metric == "l2":
        qr = qv - centroid if index.by_residual else qv
        scores = dist_ops.pairwise_scores(qr, index.codec.decode(codes), "l2",
                                          y_sqnorms=norms, rows_first=rows_first)
    else:
        scores = dist_ops.pairwise_scores(qv, index.codec.decode(codes), "ip",
                                          rows_first=rows_first)
        if index.by_residual:
            scores = scores + (qv @ centroid)[:, None]
    return scores, first, row_ok


def looked_up_scores(index, qv, codes, norms, centroid, tables):
    """Scores (Qc, Lc) of the rows' codes for queries qv, by look-up in their tables:
    tables = (all queries' (nq, M, ksub) tables, which of them are qv's). The entries
    are gathered from the flattened tables by one flat index each, not copied per work
    item first. Measured (2 threads, 256 queries per call, QPS copied -> flat):
    sift-textures IVF2048,PQ16 nprobe 11 7.7k -> 8.3k; debian-minilm IVF1024,PQ48
    nprobe 6 10.6k -> 12.4k; fashion-mnist IVF1024,PQ98 nprobe 4 4.2k -> 5.6k."""
    tables, query = tables
    decode = index.codec.kernel_decode()
    _, M, ksub = tables.shape
    sub = unpack_codes(codes, M, decode.nbits)                              # (Lc, M)
    entry = sub + jnp.arange(M, dtype=jnp.int32) * ksub                     # (Lc, M)
    flat = (query * (M * ksub))[:, None, None] + entry[None]                # (Qc, Lc, M)
    q_dots = jnp.sum(tables.reshape(-1)[flat], axis=-1)                     # (Qc, Lc)
    if index.metric != "l2":
        return q_dots + (qv @ centroid)[:, None] if index.by_residual else q_dots
    if not index.by_residual:
        return jnp.maximum(dist_ops.squared_norms(qv)[:, None] + norms[None, :]
                           - 2.0 * q_dots, 0.0)
    # ||q - c - y||^2 = ||q - c||^2 + ||y||^2 + 2 c.y - 2 q.y
    c_dots = jnp.sum(decode.ip_tables(centroid[None]).reshape(-1)[entry], axis=-1)  # (Lc,)
    qr = qv - centroid
    return jnp.maximum(dist_ops.squared_norms(qr)[:, None] + (norms + 2.0 * c_dots)[None]
                       - 2.0 * q_dots, 0.0)


def range_plan(index, lists):
    """Work items of `range_scan` (see module docstring)."""
    nq, npb = lists.shape
    shape = scan_shape(index, nq, npb, 1)
    query_group, row_chunk, pairs = shape["query_group"], shape["row_chunk"], shape["pairs"]
    lims, perm = bucket_sort(lists.reshape(pairs), index.nlist)
    group_sizes = jnp.diff(lims)
    list_sizes = jnp.diff(index.offsets)
    q_chunks = (group_sizes + query_group - 1) // query_group
    r_chunks = (list_sizes + row_chunk - 1) // row_chunk
    items = q_chunks * r_chunks
    item_end = prefix_sum(items)
    return dict(query_group=query_group, row_chunk=row_chunk, lims=lims, perm=perm,
                r_chunks=r_chunks, items=items, item_end=item_end, npb=npb, pairs=pairs)


def range_item(index, plan, w, q, selector):
    """Queries, rows and the (Qc, Lc) score block of work item w of `_plan`."""
    qg, rc = plan["query_group"], plan["row_chunk"]
    lst = jnp.searchsorted(plan["item_end"], w, side="right",
                           method="scan_unrolled").astype(jnp.int32)
    local = w - (plan["item_end"][lst] - plan["items"][lst])
    j, p = local // plan["r_chunks"][lst], local % plan["r_chunks"][lst]
    pos = plan["lims"][lst] + j * qg + jnp.arange(qg)
    pair_ok = pos < plan["lims"][lst + 1]
    pair = plan["perm"][jnp.clip(pos, 0, plan["pairs"] - 1)]
    query = pair // plan["npb"]
    scores, first, row_ok = chunk_scores(index, 
        lst, q[query], index.offsets[lst] + p * rc, rc, selector)
    ids = jax.lax.dynamic_slice_in_dim(index.ids, first, rc)
    ok = pair_ok[:, None] & row_ok[None, :]
    return pair, pair_ok, query, scores, ok, ids


def range_scan(index, q, lists, radius, capacity: int, selector=None):
    """Range search over the probed lists (nq, nprobe) of prepared queries q: (counts,
    scores, ids), each query's first `capacity` hits in list order."""
    nq = q.shape[0]
    plan = range_plan(index, lists)
    similarity = dist_ops.is_similarity(index.metric)
    radius = jnp.asarray(radius, jnp.float32)

    def body(w, state):
        counts, dist, ids_out = state
        _, pair_ok, query, scores, ok, ids = range_item(index, plan, w, q, selector)
        hit = ok & (scores > radius if similarity else scores < radius)
        safe_q = jnp.where(pair_ok, query, 0)
        slot = counts[safe_q][:, None] + prefix_sum(hit, axis=1, dtype=jnp.int32) - 1
        slot = jnp.where(hit, slot, capacity)
        target_q = jnp.where(pair_ok, query, nq)[:, None]
        dist = dist.at[target_q, slot].set(scores, mode="drop")
        ids_out = ids_out.at[target_q, slot].set(
            jnp.broadcast_to(ids[None, :], hit.shape), mode="drop")
        counts = counts.at[jnp.where(pair_ok, query, nq)].add(
            jnp.sum(hit, axis=1, dtype=jnp.int32), mode="drop")
        return counts, dist, ids_out

    fill = -jnp.inf if similarity else jnp.inf
    state = (jnp.zeros((nq,), jnp.int32), jnp.full((nq, capacity), fill, jnp.float32),
             jnp.full((nq, capacity), -1, index.ids.dtype))
    if index.capacity:
        state = jax.lax.fori_loop(0, plan["item_end"][-1], body, state)
    return state
