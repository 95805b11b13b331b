"""Maintenance of graph indexes as whole objects: `compact` (rebuild over the live
rows), `live_rows`, `emptied`, and `build` (`jann.add` in chunks with progress)."""

from __future__ import annotations

import dataclasses
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jann import api
from jann.errors import InvalidInputError
from jann.graph.index import GraphIndex

__all__ = ["build", "compact", "emptied", "live_rows"]


def compact(index, *, verbose: bool = False):
    """The index without its tombstoned rows, the graph rebuilt over the live rows.

    Ids are kept (sequential ids continue after the largest ever given). Compressed
    storage is rebuilt from the decoded rows (codes decode and re-encode to themselves
    for SQ and PQ)."""
    inner = _graph_of(index)
    vectors, ids = live_rows(inner)
    fresh = emptied(inner)
    if ids.size:
        fresh = build(fresh, vectors, ids=ids, verbose=verbose)
    fresh = dataclasses.replace(fresh, id_mode=inner.id_mode, n_added=inner.n_added)
    return _with_graph(index, fresh)


def live_rows(graph: GraphIndex):
    """(vectors, ids) on the host of the rows that are not tombstoned, in storage order:
    the decoded float32 vectors, or a binary graph's packed codes (what `add` takes)."""
    rows = np.flatnonzero(np.asarray(graph.live() & ~graph.deleted))
    ids = np.asarray(graph.ids)[rows]
    if graph.binary:
        return np.asarray(graph.payload)[rows], ids
    if not rows.size:
        return np.zeros((0, graph.d), np.float32), ids
    return np.asarray(graph.codec.decode(graph.payload[jnp.asarray(rows)])), ids


def emptied(graph: GraphIndex, id_mode: str = "idmap") -> GraphIndex:
    """An empty graph index with graph's configuration, codec and key."""
    return GraphIndex.create(graph.d, graph.graph_degree, graph.intermediate_degree,
                             graph.codec, metric=graph.metric, id_mode=id_mode,
                             binary=graph.binary, description=graph.description,
                             key=jax.random.wrap_key_data(graph.rng))


def _graph_of(index):
    while not isinstance(index, GraphIndex):
        if index.inner is None:
            raise InvalidInputError(f"{type(index).__name__} holds no graph index")
        index = index.inner
    return index


def _with_graph(index, graph):
    if isinstance(index, GraphIndex):
        return graph
    return index.with_inner(_with_graph(index.inner, graph))


def build(index, x, ids=None, *, verbose: bool = False, chunk: int = 16384):
    """`jann.add` in chunks with a progress line per chunk on stderr (verbose)."""
    n = x.shape[0]
    t0 = time.perf_counter()
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        index = api.add(index, x[start:stop], None if ids is None else ids[start:stop])
        if verbose:
            jax.block_until_ready(index)
            print(f"graph build: {stop}/{n} rows, {time.perf_counter() - t0:.1f} s",
                  file=sys.stderr, flush=True)
    return index
