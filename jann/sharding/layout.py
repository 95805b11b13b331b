"""Rows over shards: how an add is spread over the shards (water filling), splitting
the rows of stacked Flat / IVF shards into pieces (round-robin in (list, id) order),
stacks of graph sub-graphs, and merging a stack back into one index."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jann import _storage
from jann import graph as graph_lib
from jann.errors import InvalidInputError
from jann.flat import FlatIndex
from jann.graph import GraphIndex
from jann.ivf.tail import empty_tail
from jann.ops.sorting import list_offsets, prefix_sum
from jann.sharding.mesh import local_shard, restack


def water_fill(counts, n):
    """Rows each shard receives when n rows go, one by one, to the least-filled shard
    (ties to the lower shard): fill all shards up to a level L, the rest one each."""
    counts = counts.astype(jnp.int32)
    n = jnp.asarray(n, jnp.int32)

    def need(level):
        return jnp.sum(jnp.maximum(level - counts, 0))

    def bisect(_, bounds):
        lo, hi = bounds
        mid = (lo + hi) // 2
        ok = need(mid) >= n
        return jnp.where(ok, lo, mid + 1), jnp.where(ok, mid, hi)

    level, _ = jax.lax.fori_loop(0, 32, bisect, (jnp.min(counts), jnp.max(counts) + n))
    base = jnp.maximum(level - 1 - counts, 0)
    at_level = counts <= level - 1
    extra = at_level & (prefix_sum(at_level) <= n - jnp.sum(base))
    return base + extra.astype(jnp.int32)


# ------------------------------------------------------------- splitting into shards
def _rows(index):
    """(row arrays (.., ids at position 2), list of each row or None) of a shard."""
    if isinstance(index, FlatIndex):
        return (index.vectors, index.sqnorms, index.ids), None
    return (index.payload, index.norms, index.ids), index.row_lists()


def _with_rows(template, rows, lists, count, capacity, n_added):
    """`template` (configuration, quantizer, codec) holding `rows` (the first `count`
    live) instead of its own; `n_added`: its share of the rows ever added (IVF)."""
    if isinstance(template, FlatIndex):
        vectors, sqnorms, ids = rows
        index = dataclasses.replace(template, vectors=vectors, sqnorms=sqnorms, ids=ids,
                                    count=count, status=jnp.zeros((), jnp.int32),
                                    id_order=jnp.arange(capacity, dtype=jnp.int32))
        return index.grown(capacity)  # recomputes the direct map for these rows
    payload, norms, ids = rows
    sizes = jnp.bincount(lists, length=template.nlist + 1)[: template.nlist]
    offsets = list_offsets(sizes)
    return dataclasses.replace(template, payload=payload, norms=norms, ids=ids,
                               offsets=offsets, count=count, n_added=n_added,
                               status=jnp.zeros((), jnp.int32),
                               **({"tail_lists": empty_tail(capacity, template.nlist)}
                                  if hasattr(template, "tail_lists") else {}))


def split(stack, parts: int, part, capacity: int):
    """Piece `part` of `parts` of the live rows of G stacked shards (leading axis G) as
    one shard of `capacity` rows: rows ordered by (list, id), then dealt round-robin, so
    each piece holds an even share of every inverted list and ids stay in order."""
    template = local_shard(stack)
    rows, lists = jax.vmap(_rows)(stack)
    groups, per = rows[0].shape[:2]
    total = groups * per
    if total == 0:
        empty = dataclasses.replace(template.grown(capacity), status=jnp.zeros((), jnp.int32))
        if isinstance(template, FlatIndex):
            return empty
        return empty.with_next_id(jnp.where(part == 0, jnp.sum(stack.n_added), 0))
    flat = [r.reshape((total,) + r.shape[2:]) for r in rows]
    live = (jnp.arange(per)[None, :] < stack.count[:, None]).reshape(total)
    ids = flat[2]
    order = jnp.argsort(jnp.where(live, ids, jnp.iinfo(ids.dtype).max), stable=True)
    if lists is not None:
        lists = jnp.where(live, lists.reshape(total), template.nlist)
        order = order[jnp.argsort(lists[order], stable=True)]
    pos = part + jnp.arange(capacity) * parts
    valid = pos < jnp.sum(live)
    src = order[jnp.minimum(pos, total - 1)]
    fills = (0, 0, -1)
    new_rows = tuple(
        jnp.where(valid.reshape((-1,) + (1,) * (r.ndim - 1)), r[src], jnp.asarray(f, r.dtype))
        for r, f in zip(flat, fills))
    new_lists = None if lists is None else jnp.where(valid, lists[src], template.nlist)
    count = jnp.sum(valid, dtype=jnp.int32)
    # Shares of the rows ever added that sum to the stack's (the next sequential id):
    # each piece its rows, the first also those removed.
    n_added = None
    if lists is not None:
        n_added = count.astype(stack.n_added.dtype) + jnp.where(
            part == 0, jnp.sum(stack.n_added) - jnp.sum(live), 0).astype(stack.n_added.dtype)
    return _with_rows(template, new_rows, new_lists, count, capacity, n_added)


@functools.partial(jax.jit, static_argnames=("parts", "capacity", "one"))
def split_all(stack, parts: int, capacity: int, one: bool = False):
    """All `parts` pieces, stacked; `one`: stack is a single index (stacked here, in the
    compiled program, so that no copy of it is made)."""
    stack = restack(stack) if one else stack
    return jax.vmap(lambda part: split(stack, parts, part, capacity))(jnp.arange(parts))


def with_id_mode(index, id_mode: str):
    if isinstance(index, FlatIndex):
        return dataclasses.replace(index, id_mode=id_mode).grown(index.capacity)
    return dataclasses.replace(index, id_mode=id_mode)


# ------------------------------------------------------------------ graph shards
# A graph cannot be cut by rows: its edges name rows. Each shard is its own sub-graph,
# built (on the host, `graph.build`) over every S-th of the rows in id order; a query
# searches every sub-graph and the per-shard results are merged (each sub-graph holds
# 1/S of the rows, so ef per shard buys more recall than on the whole graph).
def rows_by_id(graphs):
    """(vectors, ids) of the live rows of `graphs`, in id order, on the host."""
    rows = [graph_lib.live_rows(g) for g in graphs]
    vectors = np.concatenate([v for v, _ in rows])
    ids = np.concatenate([i for _, i in rows])
    order = np.argsort(ids, kind="stable")
    return vectors[order], ids[order]


def sub_graph_stack(template: GraphIndex, vectors, ids, nshards: int):
    """Stacked sub-graphs (ids stored as given: "idmap" shards) over every nshards-th of
    the rows (vectors, ids), with template's configuration."""
    if ids.size and ids.size // nshards <= template.graph_degree:
        raise InvalidInputError(
            f"{ids.size} vectors over {nshards} shards leave fewer than graph_degree + 1 = "
            f"{template.graph_degree + 1} per shard to build a sub-graph from: use fewer "
            "devices, a lower degree, or shard the index once it holds more vectors")
    empty = graph_lib.emptied(template)
    shards = [graph_lib.build(empty, vectors[p::nshards], ids[p::nshards])
              if p < ids.size else empty for p in range(nshards)]
    capacity = _storage.fitted_capacity(max(_storage.host_int(g.count) for g in shards))
    return jax.tree.map(lambda *a: jnp.stack(a), *(g.grown(capacity) for g in shards))


def unstacked(stack):
    return [jax.tree.map(lambda a: a[s], stack) for s in range(stack.count.shape[0])]


def _merge_graph_stack(stack, id_mode: str):
    """One graph over the live rows of every sub-graph (rebuilt, ids kept)."""
    shards = unstacked(stack)
    vectors, ids = rows_by_id(shards)
    merged = graph_lib.emptied(shards[0])
    if ids.size:
        merged = graph_lib.build(merged, vectors, ids)
    if id_mode == "sequential":  # the next id: rows ever added over all shards
        merged = dataclasses.replace(merged, id_mode="sequential",
                                     n_added=jnp.sum(jnp.asarray(stack.n_added), dtype=jnp.int32))
    return merged


def merge_stack(stack, id_mode: str):
    """One index holding all the rows of a stack of shards (ids in order)."""
    if isinstance(stack, GraphIndex):
        return _merge_graph_stack(stack, id_mode)
    n = int(np.asarray(stack.count).sum())
    merged = local_shard(split_all(stack, 1, _storage.fitted_capacity(n)))
    return with_id_mode(merged, id_mode) if id_mode == "sequential" else merged
