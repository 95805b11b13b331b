"""The append tail of an IVF index: recent adds kept unsorted after the sorted lists.

The lists are one CSR run sorted by list (`IVFIndex`), so merging rows into them moves
every stored row: a 1-row add to IVF1024,Flat at 1M rows took 335 ms (faiss: 0.03 ms).
Instead an add of at most `tail_rows(capacity, nlist)` rows appends them after the
stored ones (in place when the index is donated, O(batch)) and records their lists in
`tail_lists`; rows [offsets[-1], count) are the tail. When a write would pass the tail's
size, everything is merged into sorted order at once (the old O(n) add), so a stream of
1-row adds pays that merge once per T rows.

Search reads the sorted lists as before and scores the tail rows of each query's probed
lists apart (decoded, one matmul), merging their hits into the top-k; so results are
those of the merged index. Removal, FAISS export and the shard layout merge first.

Tail size rule: T = capacity / 64, at most MAX_TAIL_ROWS, none below TAIL_MIN_CAPACITY
(a merge there costs a few ms) or for one-list indexes (their order is append order:
they append without a tail). The bound keeps the tail's scan small next to a search's
list scans (2048 rows of 128-d: ~1 MiB read per query batch) while a stream of adds at
1M rows pays the ~0.3 s merge once per 2048 rows.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jann import _storage
from jann.ops import distances as dist_ops
from jann.ops.sorting import list_offsets, prefix_sum, stable_argsort
from jann.ops.topk import merge_smallest, smallest_k_padded

__all__ = ["append", "empty_tail", "flushed", "row_lists", "tail_rows", "tail_size",
           "with_tail_hits", "with_tail_range_hits"]

TAIL_MIN_CAPACITY = 1 << 14
MAX_TAIL_ROWS = 2048


def tail_rows(capacity: int, nlist: int) -> int:
    """Rows the tail of an index of this capacity holds (the rule above)."""
    if nlist <= 1 or capacity < TAIL_MIN_CAPACITY:
        return 0
    return min(MAX_TAIL_ROWS, capacity // 64)


def tail_size(index) -> int:
    """T of this index (static: its capacity and nlist; never past its `tail_lists`)."""
    return min(tail_rows(index.capacity, index.nlist), index.tail_lists.shape[0])


def empty_tail(capacity: int, nlist: int) -> jax.Array:
    """`tail_lists` of a new index; one entry when T = 0 (a zero-size leaf cannot be
    placed on a mesh: jax refuses zero-size per-device arrays)."""
    return jnp.zeros((max(1, tail_rows(capacity, nlist)),), jnp.int32)


def row_lists(index) -> jax.Array:
    """List of each storage row (sorted part, then tail); rows past `count` get nlist."""
    rows = jnp.arange(index.capacity, dtype=jnp.int32)
    lists = (jnp.searchsorted(index.offsets, rows, side="right") - 1).astype(jnp.int32)
    size = tail_size(index)
    if not size:
        return lists
    start = index.offsets[-1]
    in_tail = (rows >= start) & (rows < index.count)
    return jnp.where(in_tail, index.tail_lists[jnp.clip(rows - start, 0, size - 1)], lists)


def _sorted_by_list(index, keys):
    """The index with its rows stably sorted by `keys` (each row's list, nlist past the
    live rows): every row in the lists, the tail empty."""
    order = stable_argsort(keys, index.nlist + 1)
    counts = jnp.bincount(keys, length=index.nlist + 1)[: index.nlist]
    offsets = list_offsets(counts)
    return dataclasses.replace(
        index, payload=index.payload[order], norms=index.norms[order],
        ids=index.ids[order], offsets=offsets, count=offsets[-1])


def flushed(index):
    """The index with its tail merged into the sorted lists (no-op without a tail)."""
    if not tail_size(index):
        return index
    return jax.lax.cond(index.count > index.offsets[-1],
                        lambda ix: _sorted_by_list(ix, row_lists(ix)), lambda ix: ix, index)


def append(index, lists, codes, norms, ids, n_valid, accept):
    """Rows appended after the stored ones (refused rows and padding dropped): kept in
    the tail while it has room, else everything merged into the sorted lists."""
    n = lists.shape[0]
    old_count = index.count
    valid = accept & (jnp.arange(n) < n_valid)
    payload, norms, ids = _storage.append_rows(
        (index.payload, index.norms, index.ids), old_count, (codes, norms, ids), n_valid,
        accept)
    count = old_count + jnp.sum(valid, dtype=jnp.int32)
    if index.nlist == 1:  # one list: sorted order is append order
        return dataclasses.replace(index, payload=payload, norms=norms, ids=ids,
                                   offsets=jnp.stack([jnp.int32(0), count]), count=count)
    size = tail_size(index)
    start = index.offsets[-1]
    slot = jnp.where(valid, old_count - start + jnp.arange(n), index.tail_lists.shape[0])
    appended = dataclasses.replace(
        index, payload=payload, norms=norms, ids=ids, count=count,
        tail_lists=index.tail_lists.at[slot].set(lists.astype(jnp.int32), mode="drop"))

    def merge_all(ix):
        rows = jnp.arange(ix.capacity, dtype=jnp.int32)
        new = (rows >= old_count) & (rows < count)
        keys = jnp.where(new, lists.astype(jnp.int32)[jnp.clip(rows - old_count, 0, n - 1)],
                         row_lists(ix))
        return _sorted_by_list(ix, keys)

    if n > size:  # cannot fit: merge (statically known)
        return merge_all(appended)
    # The rows are written first, the merge taken only when the tail overflows: a
    # conditional whose branches both wrote the buffers made XLA copy them (254 ms per
    # 1-row add at 1M rows, against 0.05 ms this way).
    return jax.lax.cond(count - start > size, merge_all, lambda ix: ix, appended)


def _tail_block(index, q, lists, selector):
    """Scores (nq, T) of prepared queries against the tail rows, whether each counts
    (live, selected, in one of the query's probed lists), and the rows' ids."""
    size = tail_size(index)
    pos = index.offsets[-1] + jnp.arange(size, dtype=jnp.int32)
    valid = pos < index.count
    rows = jnp.minimum(pos, index.capacity - 1)
    ids = index.ids[rows]
    if selector is not None:
        valid = valid & selector(ids)
    tail_lists = jnp.where(valid, index.tail_lists[:size], index.nlist)
    probed = jnp.zeros((q.shape[0], index.nlist + 1), jnp.bool_).at[
        jnp.arange(q.shape[0])[:, None], lists].set(True)
    ok = probed[:, tail_lists] & valid[None, :]
    vectors = index.codec.decode(index.payload[rows]).astype(jnp.float32)
    if index.by_residual:
        vectors = vectors + index.centroids[jnp.clip(tail_lists, 0, index.nlist - 1)]
    metric = "ip" if dist_ops.is_similarity(index.metric) else "l2"
    return dist_ops.pairwise_scores(q, vectors, metric), ok, ids


def _has_tail(index):
    return index.count > index.offsets[-1]


def with_tail_hits(index, q, lists, k: int, selector, result):
    """The top-k `result` (values, ids) of the sorted lists with the tail's hits merged."""
    if not tail_size(index):
        return result

    def merged(operands):
        (values, found_ids), q, lists = operands
        scores, ok, ids = _tail_block(index, q, lists, selector)
        sign = -1.0 if dist_ops.is_similarity(index.metric) else 1.0
        keys = jnp.where(ok, sign * scores, jnp.inf)
        tail_keys, cols = smallest_k_padded(keys, k)
        tail_ids = jnp.where(cols >= 0, ids[jnp.maximum(cols, 0)], -1)
        best, best_ids = merge_smallest(sign * values, found_ids, tail_keys, tail_ids, k)
        return sign * best, best_ids

    return jax.lax.cond(_has_tail(index), merged, lambda operands: operands[0],
                        (result, q, lists))


def with_tail_range_hits(index, q, lists, radius, selector, result):
    """Range-search `result` (counts, scores, ids: each query's first hits, capacity
    per query) with the tail's hits appended after those of the sorted lists."""
    if not tail_size(index):
        return result

    def appended(operands):
        (counts, dist, ids_out), q, lists = operands
        nq, capacity = dist.shape
        scores, ok, ids = _tail_block(index, q, lists, selector)
        hit = ok & (scores > radius if dist_ops.is_similarity(index.metric) else
                    scores < radius)
        slot = jnp.where(hit, counts[:, None] + prefix_sum(hit, axis=1) - 1, capacity)
        at = (jnp.arange(nq)[:, None], slot)
        dist = dist.at[at].set(scores, mode="drop")
        ids_out = ids_out.at[at].set(jnp.broadcast_to(ids[None, :], hit.shape), mode="drop")
        return counts + jnp.sum(hit, axis=1, dtype=jnp.int32), dist, ids_out

    return jax.lax.cond(_has_tail(index), appended, lambda operands: operands[0],
                        (result, q, lists))
