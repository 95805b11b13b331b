"""Functions of the indexes that store inverted lists (IVF): search and add with the
lists given, and merging two indexes that share a trained quantizer (FAISS contrib's
`search_preassigned`, `add_preassigned` is in `jann.api`, `merge_from`)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jann import _storage, batching
from jann._inputs import as_array, as_vectors, check_finite, is_traced
from jann.api import check_selector, ntotal, require_index, require_trained, reserve
from jann.errors import DuplicateIdError, InvalidInputError
from jann.ops.topk import check_k
from jann.selectors import IDSelector

__all__ = ["merge_from", "search_preassigned"]


def search_preassigned(index, xq, k: int, lists, *, selector: IDSelector | None = None):
    """Search only the given lists (nq, nprobe) of each query (FAISS contrib
    `search_preassigned`); -1 entries are skipped."""
    k = check_k(k)
    require_trained(index, "search_preassigned")
    check_selector(selector)
    if not index.inverted_lists:
        raise InvalidInputError(f"search_preassigned needs an IVF index, got {index.describe()}")
    xq = as_vectors(xq, index.d, "queries")
    lists = as_array(lists, "lists")
    if lists.ndim != 2 or lists.shape[0] != xq.shape[0]:
        raise InvalidInputError(f"lists must have shape ({xq.shape[0]}, nprobe), got "
                                f"{tuple(lists.shape)}")
    lists = jnp.asarray(lists, jnp.int32)
    lists = jnp.where((lists >= 0) & (lists < index.nlist), lists, index.nlist)
    if is_traced(index, xq, lists, selector):
        return index.scan(index.prepare(xq), lists, k, selector)
    check_finite(xq, "queries")
    return _scan_jit(index, jnp.asarray(xq), lists, k, selector)


@functools.partial(jax.jit, static_argnames=("k",))
def _scan_jit(index, xq, lists, k, selector):
    return index.scan(index.prepare(xq), lists, k, selector)


@jax.jit
def _insert_jit(index, lists, payload, norms, ids, n_valid):
    return index.insert_rows(lists, payload, norms, ids, n_valid, jnp.bool_(True))


def merge_from(index, other):
    """`index` with all of `other`'s vectors added (FAISS `merge_from`, the on-disk merge
    of contrib): both must share the trained quantizer and codec. Sequential ids of
    `other` are shifted by the next id of `index` (its ntotal, as FAISS does, unless it
    had removals: its ids are kept, so the shift passes every id it ever gave)."""
    require_index(index, "merge_from")
    if type(index) is not type(other) or not index.inverted_lists:
        raise InvalidInputError("merge_from needs two IVF indexes of the same kind")
    require_trained(index, "merge_from")
    require_trained(other, "merge_from")
    same = (index.nlist == other.nlist and index.d == other.d
            and index.describe() == other.describe()
            and jax.tree.structure(index.codec) == jax.tree.structure(other.codec)
            and all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
                jax.tree.leaves((index.centroids, index.codec)),
                jax.tree.leaves((other.centroids, other.codec)))))
    if not same:
        raise InvalidInputError(
            "merge_from: the indexes do not share the same trained quantizer and codec "
            "(train one, then copy it before adding, as with FAISS's on-disk merge)")
    n = ntotal(other)
    if n == 0:
        return index
    ids = np.asarray(other.ids[:n])
    first = _storage.host_int(index.next_id())
    if index.id_mode == "sequential":
        ids = ids + first
    elif index.id_mode == "idmap2" and np.isin(ids, np.asarray(index.ids[:ntotal(index)])).any():
        raise DuplicateIdError("merge_from: ids of the two IDMap2 indexes overlap")
    index = reserve(index, n)
    bucket = 1 << (n - 1).bit_length()
    pad = functools.partial(batching.pad_rows, rows=bucket)
    merged = _insert_jit(index, pad(np.asarray(other.row_lists()[:n])),
                         pad(np.asarray(other.payload[:n])), pad(np.asarray(other.norms[:n])),
                         pad(ids.astype(np.asarray(index.ids).dtype)), jnp.int32(n))
    return merged.with_next_id(first + _storage.host_int(other.next_id()))
