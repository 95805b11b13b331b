"""The public functions: add, search, range_search, remove_ids, reconstruct, train, ...

Each takes an index (an immutable pytree) and returns results or a new index; none
mutates. They dispatch to the index's pure cores (`add_core`, `search_core`, ...), and
around those do what only the host can: validate values, grow capacity by doubling, pad
batches to a few bucket sizes (so a serving loop compiles once per bucket, not per batch
size) and turn in-graph status flags into exceptions. Called inside a user's
`jax.jit` / `vmap` / `grad` (any argument a tracer), they run the cores directly on the
given shapes; see each function for what it does there with bad values.
"""

from __future__ import annotations

import difflib
import functools
import operator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jann import _storage
from jann._inputs import (
    as_array, as_ids, as_vectors, check_finite, delegated_search_params, is_traced,
    search_param_names, split_search_params)
from jann.errors import (
    DuplicateIdError, IdNotFoundError, InvalidDtypeError, InvalidInputError, NotTrainedError)
from jann.index import Index
from jann.ops import dispatch
from jann.ops import distances as dist_ops
from jann.ops.topk import check_k
from jann.selectors import IDSelector, IDSelectorBatch

__all__ = [
    "RangeResult", "add", "add_preassigned", "check", "merge_from", "ntotal", "range_search",
    "range_search_padded", "reconstruct", "reconstruct_n", "remove_ids", "reserve", "search",
    "search_preassigned", "shrink_to_fit", "stack", "train",
]

# Query batches are padded up to one of these sizes; larger batches run in chunks of the
# largest. Adds are padded the same way, with coarser sizes (an add of 1 row writes a
# 1024-row bucket, which is cheap, and keeps compiles to 3 per capacity).
QUERY_BUCKETS = (16, 64, 256, 1024, 4096, 8192, 16384)
# An index whose search skips padded query rows still pays for them in the steps that
# work on whole blocks (IVF's probe of 16 rows: one query per call took 1.1 ms as 16
# padded rows, 0.42 ms as one; sift-textures IVF2048,Flat, nprobe 45), so single queries,
# the serving case, get buckets of their own.
SKIPPING_QUERY_BUCKETS = (1, 4) + QUERY_BUCKETS
ADD_BUCKETS = (1024, 4096, 16384)
# Range search result buffers hold at most this many (query, match) slots per call.
RANGE_SLOTS = 1 << 24


def _bucket(n: int, buckets) -> int:
    return next((b for b in buckets if b >= n), buckets[-1])


def _pad_rows_np_or_jit(x, rows: int):
    if x.shape[0] == rows:
        return x
    if isinstance(x, np.ndarray):
        out = np.zeros((rows,) + x.shape[1:], x.dtype)
        out[: x.shape[0]] = x
        return out
    return _pad_jit(x, rows)


@functools.partial(jax.jit, static_argnames=("rows",))
def _pad_jit(x, rows):
    return jnp.pad(x, [(0, rows - x.shape[0])] + [(0, 0)] * (x.ndim - 1))


def _chunks(n: int, size: int):
    return [(s, min(s + size, n)) for s in range(0, max(n, 1), size)]


def _bucketed_chunks(n: int, buckets=QUERY_BUCKETS, padding_is_free: bool = False):
    """(start, stop, padded size) covering n rows: whole buckets, largest first, then the
    rest. By default the rest is cut into whole smaller buckets plus one padded one, so a
    10000-query batch runs as 8192 + 1024 + 256 + 256 + 256 + 16 instead of 16384 (39%
    padding): padded rows cost an exact search as much as real ones. An index whose
    search skips padded rows (`skips_padded_queries`: IVF probes no list for them) takes
    the rest as one padded bucket instead, as each call has a cost of its own (the
    list-major scan reads every probed list once per call: IVF1024,PQ56,RFlat on
    Fashion-MNIST, 10k queries, nprobe 8, k_factor 4 took 1.41 s as 4096 + 4096 + 4096
    and 1.05 s as one 16384)."""
    out, start = [], 0
    while n - start > 0:
        left = n - start
        size = next((b for b in reversed(buckets) if b <= left), None)
        if padding_is_free and left < buckets[-1]:
            size = _bucket(left, buckets)
        elif size is None or (size == buckets[0] and left < size):
            size = _bucket(left, buckets)
        stop = min(start + size, n)
        out.append((start, stop, size))
        start = stop
    return out or [(0, 0, buckets[0])]


def query_buckets(index) -> tuple[int, ...]:
    """The batch sizes `search` pads a query batch of this index to."""
    return SKIPPING_QUERY_BUCKETS if index.skips_padded_queries else QUERY_BUCKETS


def _as_input(index, x, name: str):
    """x validated as the index's input: float vectors, or packed codes for the binary
    indexes (their `as_input` hook checks dtype and code size)."""
    return index.as_input(x, name)


def _require_index(index, what: str):
    if not isinstance(index, Index):
        raise InvalidInputError(f"{what} needs a jann index (see jann.index_factory), got "
                                f"{type(index).__name__}")


def _require_trained(index, what: str):
    _require_index(index, what)
    if not index.is_trained:
        raise NotTrainedError(
            f"{what} on an untrained {index.describe()} index: call jann.train(index, x) first")


def _row_ok(index, x):
    """Per-row: finite (NaN allowed where the metric treats it as a missing value)."""
    if index.metric in dist_ops.NAN_TOLERANT:
        return ~jnp.any(jnp.isinf(x), axis=1)
    return jnp.all(jnp.isfinite(x), axis=1)


def _host_view(x):
    return np.asarray(x)


def _to_jax(a):
    return jax.device_put(np.ascontiguousarray(a))


# ----------------------------------------------------------------------------- train
def train(index, x, key=None, **kwargs):
    """Train the index on x (n, d) and return the trained index (a no-op for Flat).

    `key` is a `jax.random` key, or an int seed, for whatever is random in training
    (k-means init, sampling); the same key and data give the same index.
    """
    _require_index(index, "train")
    if isinstance(key, (bool, np.bool_)) or not (
            key is None or isinstance(key, (int, np.integer, jax.Array))):
        raise InvalidInputError(f"key must be a jax.random key or an int seed, got {key!r}")
    if isinstance(key, (int, np.integer)):
        key = jax.random.key(int(key))
    x = _as_input(index, x, "training vectors")
    check_finite(x, "training vectors", allow_nan=index.metric in dist_ops.NAN_TOLERANT)
    return index.train(x, key=key, **kwargs)


# ------------------------------------------------------------------------------- add
def _add_step(index, x, n_valid, ids, lists):
    extra = {} if lists is None else {"lists": lists}
    return index.add_core(x, n_valid, ids, _row_ok(index, x), **extra)


_add_jit = jax.jit(_add_step)
# For indexes the add loop made itself (after a growth, or a previous chunk): their
# buffers are updated in place instead of copied, so a large add in chunks is O(n), not
# O(n^2). The caller's own index is never donated: it stays valid, as immutability says.
_add_jit_in_place = jax.jit(_add_step, donate_argnums=0)


def _owns_all(index, callers) -> bool:
    """True when no array of `index` is also one of the caller's (safe to donate)."""
    theirs = {id(leaf) for leaf in jax.tree.leaves(callers)}
    return not any(id(leaf) in theirs for leaf in jax.tree.leaves(index))


def reserve(index, n: int):
    """Grow the index (host side) so n more rows fit; do this before adding inside jit."""
    needed = _storage.host_int(index.count) + operator.index(n)
    if needed <= index.capacity:
        return index
    return index.grown(_storage.grown_capacity(index.capacity, needed))


def add(index, x, ids=None):
    """Add vectors x (n, d), with user ids (n,) for "IDMap" indexes; returns the new index.

    Outside jit: capacity grows by doubling as needed, the batch is padded to a bucket
    size, and NaN / inf vectors or (IDMap2) duplicate ids raise, leaving the given index
    as it was. Inside jit: shapes are static, so an add that does not fit (or has bad
    rows) is refused as a whole and `index.status` records why; `jann.check(index)`
    raises for it outside jit. Reserve room first with `jann.reserve`.
    """
    return _add(index, x, ids, None)


def add_preassigned(index, x, lists, ids=None):
    """Add vectors to the inverted lists given (n,), bypassing the coarse quantizer
    (FAISS contrib `add_preassigned`)."""
    _require_index(index, "add_preassigned")
    lists = as_array(lists, "lists")
    if not index.inverted_lists:
        raise InvalidInputError(f"add_preassigned needs an IVF index, got {index.describe()}")
    if lists.ndim != 1 or lists.shape[0] != np.shape(x)[0]:
        raise InvalidInputError(f"lists must have shape ({np.shape(x)[0]},), got {lists.shape}")
    if not is_traced(lists):
        a = np.asarray(lists)
        if a.size and (a.min() < 0 or a.max() >= index.nlist):
            raise InvalidInputError(f"lists must lie in [0, nlist={index.nlist})")
    return _add(index, x, ids, lists)


def _add(index, x, ids, lists):
    """`add` and `add_preassigned` (lists: the given inverted list of each row, or None)."""
    _require_trained(index, "add")
    x = _as_input(index, x, "x")
    n = x.shape[0]
    if ids is None and index.id_mode != "sequential":
        raise InvalidInputError(
            f"{index.describe()} stores user ids: call jann.add(index, x, ids=...)")
    if ids is not None and index.id_mode == "sequential":
        raise InvalidInputError(
            f"{index.describe()} numbers vectors itself and takes no ids; build the index "
            f"with 'IDMap,{index.describe()}' to give your own ids")
    if ids is not None:
        ids = as_ids(ids, n)
    extra = {} if lists is None else {"lists": jnp.asarray(lists, jnp.int32)}
    if is_traced(index, x, ids, lists):
        return index.add_core(x, n, ids, _row_ok(index, x), **extra)
    index.check_add(n)  # e.g. a graph's first add must exceed its degree
    if n == 0:
        return index
    check_finite(x, "x", allow_nan=index.metric in dist_ops.NAN_TOLERANT)
    status_before = _storage.host_int(index.status)
    callers = index
    # Grown once for the whole batch: each capacity is a compile of the add program
    # (200,000 rows in 16384-row chunks grew six times: 21 compiles, 4.3 s).
    index = reserve(index, n)
    for start, stop in _chunks(n, ADD_BUCKETS[-1]):
        rows = stop - start
        step = _add_jit_in_place if _owns_all(index, callers) else _add_jit
        bucket = _bucket(rows, ADD_BUCKETS)
        chunk_ids = None if ids is None else _pad_rows_np_or_jit(ids[start:stop], bucket)
        chunk_lists = None if lists is None else _pad_rows_np_or_jit(
            np.asarray(lists[start:stop], np.int32), bucket)
        index = step(index, _pad_rows_np_or_jit(x[start:stop], bucket),
                     jnp.int32(rows), chunk_ids, chunk_lists)
        _storage.raise_for_status(_storage.host_int(index.status) & ~status_before)
    return index


def check(index):
    """Raise the error a refused in-jit write recorded in `index.status`; else return it."""
    _storage.raise_for_status(_storage.host_int(index.status))
    return index


def ntotal(index) -> int:
    """Number of vectors in the index (FAISS `ntotal`; tombstoned rows not counted)."""
    _require_index(index, "ntotal")
    return _storage.host_int(index.ntotal_live())


# ---------------------------------------------------------------------------- search
def search_program_params(index, params: dict):
    """(static, dynamic) search parameters: plain Python values select a compiled program;
    array values (e.g. the exact nprobe inside its power-of-two bucket) are traced
    arguments, so changing them does not recompile. `backend` (every index takes it; the
    process default when absent) is static and reaches every search core."""
    params = dict(params)
    backend = dispatch.resolve_backend(params.pop("backend", None))
    accepted = search_param_names(index)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        known = sorted(accepted + ["backend"])
        meant = [m for name in unknown for m in difflib.get_close_matches(name, known, 1)]
        hint = f" (did you mean {', '.join(map(repr, meant))}?)" if meant else ""
        raise InvalidInputError(
            f"unknown search parameter{'s' if len(unknown) > 1 else ''} {unknown} for "
            f"{index.describe()}{hint}; it accepts {known}")
    static, dynamic = split_search_params(delegated_search_params(index, index.describe(),
                                                                  params))
    static["backend"] = backend
    return tuple(sorted(static.items())), dynamic


def _check_selector(selector):
    if selector is not None and not isinstance(selector, IDSelector):
        raise InvalidInputError(
            f"selector must be a jann.IDSelector*, got {type(selector).__name__}")


def _search_impl(index, xq, k, selector, params):
    static, dynamic = params
    ok = _row_ok(index, xq)
    distances, ids = index.search_core(xq, k, selector, **dict(static), **dynamic)
    fill = -jnp.inf if dist_ops.is_similarity(index.metric) else jnp.inf
    distances = jnp.where(ok[:, None], distances, fill)
    return distances, jnp.where(ok[:, None], ids, -1), ok


@functools.partial(jax.jit, static_argnames=("k", "static"))
def _search_jit(index, xq, k, selector, static, dynamic):
    return _search_impl(index, xq, k, selector, (static, dynamic))


def search(index, xq, k: int, *, selector: IDSelector | None = None, **params):
    """The k nearest stored vectors of each query: (distances (nq, k) float32, ids (nq, k)).

    Distances are the metric's values (squared L2; inner products for ip/cosine, in
    descending order). Missing results are id -1 with distance +inf (-inf for
    similarities). `selector` restricts results to the ids it accepts (exact top-k among
    them). Search-time knobs (nprobe, ...) are keyword arguments. Outside jit, queries
    containing NaN / inf raise; inside jit such a query's row comes back empty (-1).
    """
    k = check_k(k)
    _require_trained(index, "search")
    _check_selector(selector)
    params = search_program_params(index, params)
    xq = _as_input(index, xq, "queries")
    if is_traced(index, xq, selector):
        return _search_impl(index, xq, k, selector, params)[:2]
    nq = xq.shape[0]
    out_d, out_i = [], []
    skips_padding = index.skips_padded_queries
    static, dynamic = params
    chunks = _bucketed_chunks(nq, query_buckets(index), padding_is_free=skips_padding)
    for start, stop, size in chunks:
        chunk = _pad_rows_np_or_jit(xq[start:stop], size)
        if skips_padding:
            dynamic = {**dynamic, "n_queries": np.asarray(stop - start, np.int32)}
        distances, ids, ok = _search_jit(index, chunk, k, selector, static, dynamic)
        ok = _host_view(ok)[: stop - start]
        if not ok.all():
            raise InvalidInputError(
                f"queries contain NaN or inf (first in row {start + int(np.argmin(ok))})")
        if len(chunks) == 1 and stop - start == size:
            return distances, ids  # already whole: no copy back (0.1 ms of a 1-query call)
        out_d.append(_host_view(distances)[: stop - start])
        out_i.append(_host_view(ids)[: stop - start])
    return jax.device_put((np.concatenate(out_d), np.concatenate(out_i)))


# ---------------------------------------------------------------------- range search
class RangeResult(NamedTuple):
    """Fixed-size range search results (for use inside jit).

    counts: (nq,) true number of matches per query (may exceed the capacity);
    distances, ids: (nq, capacity), matches first (in storage order), then +inf / -1;
    overflow: () bool, some query had more matches than the capacity.
    """

    counts: jax.Array
    distances: jax.Array
    ids: jax.Array
    overflow: jax.Array


def _check_radius(index, radius):
    if is_traced(radius):
        return radius
    if isinstance(radius, (bool, np.bool_)) or not np.isscalar(radius) and np.ndim(radius):
        raise InvalidInputError(f"radius must be a scalar, got {radius!r}")
    try:
        r = float(radius)
    except (TypeError, ValueError):
        raise InvalidDtypeError(f"radius must be a number, got {radius!r}") from None
    if np.isnan(r):
        raise InvalidInputError("radius is NaN")
    if r < 0 and not dist_ops.is_similarity(index.metric):
        raise InvalidInputError(
            f"radius must be >= 0 for the {index.metric} distance, got {r}")
    return r


def _range_impl(index, xq, radius, capacity, selector, params):
    static, dynamic = params
    ok = _row_ok(index, xq)
    counts, distances, ids = index.range_core(xq, radius, capacity, selector, **dict(static),
                                              **dynamic)
    counts = jnp.where(ok, counts, 0)
    ids = jnp.where(ok[:, None], ids, -1)
    return RangeResult(counts, distances, ids, jnp.any(counts > capacity)), ok


@functools.partial(jax.jit, static_argnames=("capacity", "static"))
def _range_jit(index, xq, radius, capacity, selector, static, dynamic):
    return _range_impl(index, xq, radius, capacity, selector, (static, dynamic))


def _range_prologue(index, xq, radius, selector, params):
    _require_trained(index, "range_search")
    _check_selector(selector)
    return (_as_input(index, xq, "queries"), _check_radius(index, radius),
            search_program_params(index, params))


def range_search_padded(index, xq, radius, max_results: int, *,
                        selector: IDSelector | None = None, **params) -> RangeResult:
    """Range search into fixed (nq, max_results) buffers: the form that works inside jit.

    Check `result.overflow` (or `counts > max_results`) for queries whose matches did not
    all fit; a query with NaN / inf gets no matches.
    """
    xq, radius, params = _range_prologue(index, xq, radius, selector, params)
    capacity = check_k(max_results)
    if is_traced(index, xq, radius, selector):
        return _range_impl(index, xq, radius, capacity, selector, params)[0]
    return _range_jit(index, xq, radius, capacity, selector, *params)[0]


def range_search(index, xq, radius, *, selector: IDSelector | None = None, **params):
    """All stored vectors within `radius` of each query, in FAISS's layout.

    Returns (lims (nq + 1,), distances, ids): query i's matches are
    distances[lims[i]:lims[i+1]], in storage order. Matches are distance < radius (for
    similarities: value > radius). Exact, whatever the number of matches: buffers that
    overflow are resized once to the exact size. Outside jit only (the result size is
    data-dependent); inside jit use `range_search_padded`.
    """
    xq, radius, params = _range_prologue(index, xq, radius, selector, params)
    if is_traced(index, xq, radius, selector):
        raise InvalidInputError(
            "range_search returns variable-size results and cannot run inside jit; use "
            "jann.range_search_padded(index, xq, radius, max_results)")

    def run(queries, capacity):
        bucket = _bucket(queries.shape[0], QUERY_BUCKETS)
        result, ok = _range_jit(index, _pad_rows_np_or_jit(queries, bucket), radius,
                                capacity, selector, *params)
        n = queries.shape[0]
        ok = _host_view(ok)[:n]
        if not ok.all():
            raise InvalidInputError(f"queries contain NaN or inf (row {int(np.argmin(ok))})")
        return (_host_view(result.counts)[:n], _host_view(result.distances)[:n],
                _host_view(result.ids)[:n])

    counts_all, dist_parts, id_parts = [], [], []
    for start, stop in _chunks(xq.shape[0], 1024):
        capacity = 64
        counts, distances, ids = run(xq[start:stop], capacity)
        if counts.max(initial=0) > capacity:
            capacity = 1 << int(counts.max() - 1).bit_length()
            rows = max(1, RANGE_SLOTS // capacity)
            parts = [run(xq[start:stop][s:e], capacity)
                     for s, e in _chunks(stop - start, rows)]
            counts, distances, ids = (np.concatenate(p) for p in zip(*parts))
        keep = np.arange(distances.shape[1])[None, :] < counts[:, None]
        counts_all.append(counts)
        dist_parts.append(distances[keep])
        id_parts.append(ids[keep])
    counts = np.concatenate(counts_all)
    lims = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64 if jax.config.jax_enable_x64
                                                         else np.int32)
    return _to_jax(lims), _to_jax(np.concatenate(dist_parts)), _to_jax(np.concatenate(id_parts))


# ------------------------------------------------------------------- remove, reconstruct
@jax.jit
def _remove_jit(index, selector):
    return index.remove_core(selector)


def remove_ids(index, selector):
    """Remove the vectors whose ids `selector` accepts: returns (new index, n_removed).

    `selector` is an IDSelector, or a collection of ids (wrapped in IDSelectorBatch).
    Sequentially numbered indexes renumber the remaining vectors 0..n-1, as FAISS's
    IndexFlat does; IDMap indexes keep their ids.
    """
    _require_trained(index, "remove_ids")
    if not isinstance(selector, IDSelector):
        selector = IDSelectorBatch(selector)
    if is_traced(index, selector):
        return index.remove_core(selector)
    new, removed = _remove_jit(index, selector)
    return new, _storage.host_int(removed)


@jax.jit
def _reconstruct_jit(index, ids):
    return index.reconstruct_core(ids)


def reconstruct(index, ids):
    """Stored vectors (float32) for the given ids: (m, d), or (d,) for a single id.

    Unknown ids raise IdNotFoundError outside jit; inside jit their rows are NaN. For
    cosine indexes the stored (normalised) vectors come back.
    """
    single = np.ndim(ids) == 0 and not is_traced(ids)
    ids = as_array(ids, "ids")
    if not np.issubdtype(ids.dtype, np.integer) or np.issubdtype(ids.dtype, np.bool_):
        raise InvalidDtypeError(f"ids must be integers, got dtype {ids.dtype}")
    ids = jnp.atleast_1d(jnp.asarray(ids).astype(index.ids.dtype))
    if is_traced(index, ids):
        return index.reconstruct_core(ids)[0]
    if index.capacity == 0:
        raise IdNotFoundError(f"id {int(ids[0])} is not in the (empty) index")
    vectors, found = _reconstruct_jit(index, ids)
    found = _host_view(found)
    if not found.all():
        raise IdNotFoundError(f"id {int(ids[int(np.argmin(found))])} is not in the index")
    return vectors[0] if single else vectors


@functools.partial(jax.jit, static_argnames=("n",))
def _reconstruct_n_jit(index, i0, n):
    return index.reconstruct_n_core(i0, n)


def reconstruct_n(index, i0: int, n: int):
    """Vectors i0 .. i0+n-1 as float32 (n, d): storage positions for Flat (insertion
    order), ids i0 .. i0+n-1 for the other indexes (as FAISS)."""
    i0, n = operator.index(i0), operator.index(n)
    total = ntotal(index)
    if i0 < 0 or n < 0 or i0 + n > total:
        raise InvalidInputError(f"reconstruct_n({i0}, {n}) is outside [0, {total})")
    if is_traced(index):
        return index.reconstruct_n_core(jnp.int32(i0), n)[0]
    vectors, found = _reconstruct_n_jit(index, jnp.int32(i0), n)
    found = _host_view(found)
    if not found.all():
        raise IdNotFoundError(f"id {i0 + int(np.argmin(found))} is not in the index")
    return vectors


# ------------------------------------------------------------ IVF-specific helpers
def search_preassigned(index, xq, k: int, lists, *, selector: IDSelector | None = None):
    """Search only the given lists (nq, nprobe) of each query (FAISS contrib
    `search_preassigned`); -1 entries are skipped."""
    k = check_k(k)
    _require_trained(index, "search_preassigned")
    _check_selector(selector)
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
    `other` are shifted by `ntotal(index)`, as FAISS does."""
    _require_index(index, "merge_from")
    if type(index) is not type(other) or not index.inverted_lists:
        raise InvalidInputError("merge_from needs two IVF indexes of the same kind")
    _require_trained(index, "merge_from")
    _require_trained(other, "merge_from")
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
    if index.id_mode == "sequential":
        ids = ids + ntotal(index)
    elif index.id_mode == "idmap2" and np.isin(ids, np.asarray(index.ids[:ntotal(index)])).any():
        raise DuplicateIdError("merge_from: ids of the two IDMap2 indexes overlap")
    index = reserve(index, n)
    bucket = 1 << (n - 1).bit_length()
    pad = functools.partial(_pad_rows_np_or_jit, rows=bucket)
    return _insert_jit(index, pad(np.asarray(other.row_lists()[:n])), pad(np.asarray(other.payload[:n])),
                       pad(np.asarray(other.norms[:n])), pad(ids.astype(np.asarray(index.ids).dtype)),
                       jnp.int32(n))


def shrink_to_fit(index):
    """The index with its capacity cut to its size (rounded up to 256 rows): use after
    building, before saving or measuring memory."""
    return index.grown(_storage.fitted_capacity(ntotal(index)))


# ---------------------------------------------------------------------------- stack
def stack(indexes):
    """Stack same-configuration indexes along a new leading axis, for `jax.vmap`.

    Capacities are padded to the largest, so `jax.vmap(lambda i, q: jann.search(i, q, k))`
    searches all of them in one compiled call (e.g. one small index per user).
    """
    indexes = list(indexes)
    if not indexes:
        raise InvalidInputError("stack needs at least one index")
    capacity = max(i.capacity for i in indexes)
    grown = [i if i.capacity == capacity else i.grown(capacity) for i in indexes]
    treedefs = {jax.tree.structure(i) for i in grown}
    if len(treedefs) != 1:
        raise InvalidInputError("stack needs indexes of the same type and configuration")
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *grown)

