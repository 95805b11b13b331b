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

import jax
import jax.numpy as jnp
import numpy as np

from jann import _storage, batching, programs
from jann._inputs import (
    as_array, as_ids, check_finite, delegated_search_params, is_traced, outside_id_range,
    search_param_names, split_search_params)
from jann.errors import (
    IdNotFoundError, InvalidDtypeError, InvalidInputError, JannError, NotTrainedError)
from jann.index import Index
from jann.ops import dispatch
from jann.ops import distances as dist_ops
from jann.ops.topk import check_k
from jann.selectors import IDSelector, IDSelectorBatch

__all__ = [
    "add", "add_preassigned", "check", "clear_status", "ntotal", "reconstruct", "reconstruct_n",
    "remove_ids", "reserve", "search", "shrink_to_fit", "stack", "train",
]



def _as_input(index, x, name: str):
    """x validated as the index's input: float vectors, or packed codes for the binary
    indexes (their `as_input` hook checks dtype and code size)."""
    return index.as_input(x, name)


def require_index(index, what: str):
    if not isinstance(index, Index):
        raise InvalidInputError(f"{what} needs a jann index (see jann.index_factory), got "
                                f"{type(index).__name__}")


def require_trained(index, what: str):
    require_index(index, what)
    if not index.is_trained:
        raise NotTrainedError(
            f"{what} on an untrained {index.describe()} index: call jann.train(index, x) first")


def row_ok(index, x):
    """Per-row: finite (NaN allowed where the metric treats it as a missing value)."""
    if index.metric in dist_ops.NAN_TOLERANT:
        return ~jnp.any(jnp.isinf(x), axis=1)
    return jnp.all(jnp.isfinite(x), axis=1)


# ----------------------------------------------------------------------------- train
def train(index, x, key=None, **kwargs):
    """Train the index on x (n, d) and return the trained index (a no-op for Flat).

    `key` is a `jax.random` key, or an int seed, for whatever is random in training
    (k-means init, sampling); the same key and data give the same index.
    """
    require_index(index, "train")
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
    return index.add_core(x, n_valid, ids, row_ok(index, x), **extra)


_add_jit = jax.jit(_add_step)
# For indexes the add loop made itself (after a growth, or a previous chunk): their
# buffers are updated in place instead of copied, so a large add in chunks is O(n), not
# O(n^2). The caller's own index is never donated: it stays valid, as immutability says.
_add_jit_in_place = jax.jit(_add_step, donate_argnums=0)


def _owns_all(index, callers) -> bool:
    """True when no array of `index` is also one of the caller's (safe to donate)."""
    theirs = {id(leaf) for leaf in jax.tree.leaves(callers)}
    return not any(id(leaf) in theirs for leaf in jax.tree.leaves(index))


_copies = jax.jit(lambda leaves: [jnp.copy(leaf) for leaf in leaves])


def _owned(index, callers):
    """index with its own copy of every array it shares with `callers` (after a growth:
    the centroids, offsets, counters; small next to the grown buffers), made by one
    program (a copy per leaf compiled one program per shape)."""
    theirs = {id(leaf) for leaf in jax.tree.leaves(callers)}
    leaves, tree = jax.tree.flatten(index)
    shared = [i for i, leaf in enumerate(leaves) if id(leaf) in theirs]
    for i, copy in zip(shared, _copies([leaves[i] for i in shared])):
        leaves[i] = copy
    return jax.tree.unflatten(tree, leaves)


def reserve(index, n: int):
    """Grow the index (host side) so n more rows fit; do this before adding inside jit."""
    needed = _storage.host_int(index.count) + operator.index(n)
    if needed <= index.capacity:
        return index
    return index.grown(_storage.grown_capacity(index.capacity, needed))


def add(index, x, ids=None, *, donate: bool = False):
    """Add vectors x (n, d), with user ids (n,) for "IDMap" indexes; returns the new index.

    Outside jit: capacity grows by doubling as needed, the batch is padded to a bucket
    size, and NaN / inf vectors or (IDMap2) duplicate ids raise, leaving the given index
    as it was. Inside jit: shapes are static, so an add that does not fit (or has bad
    rows) is refused as a whole and `index.status` records why; `jann.check(index)`
    raises for it outside jit. Reserve room first with `jann.reserve`.

    The given index stays valid (immutability), so each add copies its buffers: O(index
    size) per call. `donate=True` hands them over instead (jax buffer donation): the new
    index reuses them in place and the given one must not be used again, the way to
    stream small adds into a large index (`ix = jann.add(ix, row, donate=True)`). NaN /
    inf rows raise before anything is donated; an add the program refuses (IDMap2 ids
    already stored) raises with the intact index as the error's `.index`.
    """
    return _add(index, x, ids, None, donate)


def add_preassigned(index, x, lists, ids=None):
    """Add vectors to the inverted lists given (n,), bypassing the coarse quantizer
    (FAISS contrib `add_preassigned`)."""
    require_index(index, "add_preassigned")
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


def _add(index, x, ids, lists, donate=False):
    """`add` and `add_preassigned` (lists: the given inverted list of each row, or None)."""
    require_trained(index, "add")
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
        return index.add_core(x, n, ids, row_ok(index, x), **extra)
    index.check_add(n)  # e.g. a graph's first add must exceed its degree
    if n == 0:
        return index
    check_finite(x, "x", allow_nan=index.metric in dist_ops.NAN_TOLERANT)
    status_before = _storage.host_int(index.status)
    callers = () if donate else index
    # Grown once for the whole batch: each capacity is a compile of the add program
    # (200,000 rows in 16384-row chunks grew six times: 21 compiles, 4.3 s).
    grown = reserve(index, n)
    chunks = batching.chunks(n, batching.ADD_BUCKETS[-1])
    # The last chunk of a large add is padded to the others' size where padding costs
    # next to nothing: one add program instead of two (1.0-1.3 s each at d = 384).
    one_bucket = len(chunks) > 1 and index.skips_padded_adds
    if not donate and len(chunks) > 1:
        # Every step donates, so one add program is compiled, not a copying one for the
        # first step and a donating one for the rest (1.3 s each for IVF1024,Flat at
        # d = 384); copying what the caller's index shares costs less than the step.
        # A one-step add keeps the copying program, which later adds at this capacity
        # share (many small adds compile once per capacity, not twice).
        grown, callers = _owned(grown, callers), ()
    index = grown
    for start, stop in chunks:
        rows = stop - start
        step = _add_jit_in_place if _owns_all(index, callers) else _add_jit
        bucket = batching.ADD_BUCKETS[-1] if one_bucket else batching.bucket(
            rows, batching.ADD_BUCKETS)
        chunk_ids = None if ids is None else batching.pad_rows(ids[start:stop], bucket)
        chunk_lists = None if lists is None else batching.pad_rows(
            np.asarray(lists[start:stop], np.int32), bucket)
        index = step(index, batching.pad_rows(x[start:stop], bucket),
                     np.int32(rows), chunk_ids, chunk_lists)
        refused = _storage.host_int(index.status) & ~status_before
        if refused:
            try:
                _storage.raise_for_status(refused)
            except JannError as error:
                if donate:  # the caller's buffers are gone: hand back the intact index
                    error.index = index.with_status_cleared().with_status(status_before)
                    error.args = (f"{error.args[0]} (the index, its buffers donated, is "
                                  "intact in this error's .index)",)
                raise
    return index


def check(index):
    """Raise the error that refused in-jit writes recorded in `index.status`; else return
    the index.

    The status word is sticky, like floating-point exception flags: each refused write
    inside jit adds its bit, and later writes, successful or not, keep it, so a refusal
    early in a jitted loop is not hidden by the adds after it. It stays set until
    `jann.clear_status`, and a flagged index cannot be saved. A refused write changes no
    stored vector: only the bit says it happened. Outside jit a refused write raises at
    once and returns nothing, so it never sets the word.
    """
    require_index(index, "check")
    _storage.raise_for_status(_storage.host_int(index.status))
    return index


def clear_status(index):
    """The index with its status word cleared, once the refused writes `jann.check`
    reported are handled (e.g. re-added after `jann.reserve`)."""
    require_index(index, "clear_status")
    return index.with_status_cleared()


def ntotal(index) -> int:
    """Number of vectors in the index (FAISS `ntotal`; tombstoned rows not counted)."""
    require_index(index, "ntotal")
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


def check_selector(selector):
    if selector is not None and not isinstance(selector, IDSelector):
        raise InvalidInputError(
            f"selector must be a jann.IDSelector*, got {type(selector).__name__}")


def _search_impl(index, xq, k, selector, params):
    static, dynamic = params
    ok = row_ok(index, xq)
    distances, ids = index.search_core(xq, k, selector, **dict(static), **dynamic)
    fill = -jnp.inf if dist_ops.is_similarity(index.metric) else jnp.inf
    distances = jnp.where(ok[:, None], distances, fill)
    return distances, jnp.where(ok[:, None], ids, -1), ok


def _search_program(index, xq, k, selector, static, dynamic):
    return _search_impl(index, xq, k, selector, (static, dynamic))


_search_jit = programs.jit(_search_program, static_argnames=("k", "static"))


# The most results (queries x k) one search call returns: 2**28 (2 GiB of distances and
# ids); asking for more is refused rather than left to exhaust memory.
MAX_RESULTS = 1 << 28


def search(index, xq, k: int, *, selector: IDSelector | None = None, **params):
    """The k nearest stored vectors of each query: (distances (nq, k) float32, ids (nq, k)).

    Distances are the metric's values (squared L2; inner products for ip/cosine, in
    descending order). Missing results are id -1 with distance +inf (-inf for
    similarities). `selector` restricts results to the ids it accepts (exact top-k among
    them). Search-time knobs (nprobe, ...) are keyword arguments. Outside jit, queries
    containing NaN / inf raise; inside jit such a query's row comes back empty (-1).
    """
    k = check_k(k)
    require_trained(index, "search")
    check_selector(selector)
    asked = params
    params = search_program_params(index, params)
    xq = _as_input(index, xq, "queries")
    if is_traced(index, xq, selector):
        return _search_impl(index, xq, k, selector, params)[:2]
    nq = xq.shape[0]
    if nq * k > MAX_RESULTS:
        raise InvalidInputError(
            f"{nq} queries x k={k} is {nq * k} results, more than jann returns in one call "
            f"({MAX_RESULTS}); ask for fewer neighbours or fewer queries per call")
    if k > max(index.capacity, 1):
        # No index returns more rows than it holds: the rest is FAISS's padding (-1),
        # made here instead of searched for.
        distances, ids = search(index, xq, max(index.capacity, 1), selector=selector,
                                **asked)
        fill = -jnp.inf if dist_ops.is_similarity(index.metric) else jnp.inf
        pad = ((0, 0), (0, k - distances.shape[1]))
        return (jnp.pad(distances, pad, constant_values=fill),
                jnp.pad(ids, pad, constant_values=-1))
    out_d, out_i = [], []
    skips_padding = index.skips_padded_queries
    static, dynamic = params
    chunks = batching.bucketed_chunks(nq, batching.query_buckets(index),
                                      padding_is_free=skips_padding)
    for start, stop, size in chunks:
        chunk = batching.pad_rows(xq[start:stop], size)
        if skips_padding:
            dynamic = {**dynamic, "n_queries": np.asarray(stop - start, np.int32)}
        distances, ids, ok = _search_jit(index.search_compiler_options(size), index,
                                         chunk, k, selector, static, dynamic)
        ok = batching.host_view(ok)[: stop - start]
        if not ok.all():
            raise InvalidInputError(
                f"queries contain NaN or inf (first in row {start + int(np.argmin(ok))})")
        if len(chunks) == 1 and stop - start == size:
            return distances, ids  # already whole: no copy back (0.1 ms of a 1-query call)
        out_d.append(batching.host_view(distances)[: stop - start])
        out_i.append(batching.host_view(ids)[: stop - start])
    return jax.device_put((np.concatenate(out_d), np.concatenate(out_i)))


# ------------------------------------------------------------------- remove, reconstruct
@jax.jit
def _remove_jit(index, selector):
    return index.remove_core(selector)


def remove_ids(index, selector):
    """Remove the vectors whose ids `selector` accepts: returns (new index, n_removed).

    `selector` is an IDSelector, or a collection of ids (wrapped in IDSelectorBatch).
    A sequentially numbered Flat index renumbers the remaining vectors 0..n-1, as FAISS's
    IndexFlat does. Every other index keeps the ids of the remaining vectors, and a
    sequentially numbered one goes on numbering after the largest id it ever gave (FAISS
    IVF restarts from ntotal and can give an id twice; jann does not).
    """
    require_trained(index, "remove_ids")
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
    if not is_traced(ids):  # an id the index's dtype cannot hold is not in it (no wrap)
        host = np.atleast_1d(np.asarray(ids))
        outside = outside_id_range(host, index.ids.dtype)
        if outside.any():
            raise IdNotFoundError(f"id {int(host[np.argmax(outside)])} is not in the index")
    ids = jnp.atleast_1d(jnp.asarray(ids).astype(index.ids.dtype))
    if is_traced(index, ids):
        return index.reconstruct_core(ids)[0]
    if index.capacity == 0:
        raise IdNotFoundError(f"id {int(ids[0])} is not in the (empty) index")
    vectors, found = _reconstruct_jit(index, ids)
    found = batching.host_view(found)
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
    found = batching.host_view(found)
    if not found.all():
        raise IdNotFoundError(f"id {i0 + int(np.argmin(found))} is not in the index")
    return vectors


def shrink_to_fit(index):
    """The index with its capacity cut to its size (rounded up to 256 rows): use after
    building, before saving or measuring memory."""
    used = ntotal(index)
    if np.ndim(index.count) == 0:  # a graph's tombstoned rows hold storage until compact
        used = max(used, _storage.host_int(index.count))
    return index.grown(_storage.fitted_capacity(used))


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

