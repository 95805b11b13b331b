"""Range search: every stored vector within a radius of each query.

`range_search` returns FAISS's layout (lims, distances, ids) and runs outside jit (its
result size depends on the data); `range_search_padded` fills fixed-size buffers and works
inside jit.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jann import batching, programs
from jann._inputs import is_traced
from jann.api import check_selector, require_trained, row_ok, search_program_params
from jann.errors import InvalidDtypeError, InvalidInputError
from jann.ops import distances as dist_ops
from jann.ops.topk import check_k
from jann.selectors import IDSelector

__all__ = ["RangeResult", "range_search", "range_search_padded"]

# Range search result buffers hold at most this many (query, match) slots per call.
RANGE_SLOTS = 1 << 24




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
    ok = row_ok(index, xq)
    counts, distances, ids = index.range_core(xq, radius, capacity, selector, **dict(static),
                                              **dynamic)
    counts = jnp.where(ok, counts, 0)
    ids = jnp.where(ok[:, None], ids, -1)
    return RangeResult(counts, distances, ids, jnp.any(counts > capacity)), ok


def _range_program(index, xq, radius, capacity, selector, static, dynamic):
    return _range_impl(index, xq, radius, capacity, selector, (static, dynamic))


_range_jit = programs.jit(_range_program, static_argnames=("capacity", "static"))


def _range_prologue(index, xq, radius, selector, params):
    require_trained(index, "range_search")
    check_selector(selector)
    return (index.as_input(xq, "queries"), _check_radius(index, radius),
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
    return _range_jit(index.search_compiler_options(xq.shape[0]), index, xq, radius,
                      capacity, selector, *params)[0]


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
        bucket = batching.bucket(queries.shape[0], batching.QUERY_BUCKETS)
        result, ok = _range_jit(index.search_compiler_options(bucket), index,
                                batching.pad_rows(queries, bucket), radius, capacity,
                                selector, *params)
        n = queries.shape[0]
        ok = batching.host_view(ok)[:n]
        if not ok.all():
            raise InvalidInputError(f"queries contain NaN or inf (row {int(np.argmin(ok))})")
        return tuple(batching.host_view(a)[:n] for a in (result.counts, result.distances, result.ids))

    counts_all, dist_parts, id_parts = [], [], []
    for start, stop in batching.chunks(xq.shape[0], 1024):
        capacity = 64
        counts, distances, ids = run(xq[start:stop], capacity)
        if counts.max(initial=0) > capacity:
            capacity = 1 << int(counts.max() - 1).bit_length()
            rows = max(1, RANGE_SLOTS // capacity)
            parts = [run(xq[start:stop][s:e], capacity)
                     for s, e in batching.chunks(stop - start, rows)]
            counts, distances, ids = (np.concatenate(p) for p in zip(*parts))
        keep = np.arange(distances.shape[1])[None, :] < counts[:, None]
        counts_all.append(counts)
        dist_parts.append(distances[keep])
        id_parts.append(ids[keep])
    counts = np.concatenate(counts_all)
    lims = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64 if jax.config.jax_enable_x64
                                                         else np.int32)
    return (batching.to_jax(lims), batching.to_jax(np.concatenate(dist_parts)),
            batching.to_jax(np.concatenate(id_parts)))
