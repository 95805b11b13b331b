"""FAISS's IndexHNSWFlat ("IHNf") read and written.

FAISS's file holds the HNSW levels (each node's level, its neighbours per level in one
flat array) and the flat storage. jann's graph is one level: read, it takes FAISS's level
0 (2M neighbours a node, exactly jann's `graph_degree` for "HNSW<M>") with the edges
ranked by distance, and as its fixed entry points the nodes of the highest levels (the
entry point first), which stand in for the upper levels as jann's search does anyway.
Written, a jann graph with float storage keeps its edges as FAISS's level 0, and gets
upper levels FAISS descends from its entry point: level l holds n / M**l rows drawn at
random (nested, seed 0), each linked to at most M rows of that level chosen by HNSW's
heuristic among its CANDIDATES nearest (exact), with
FAISS's default level probabilities, so FAISS searches and extends it as one it built.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from jann._storage import fitted_capacity, id_mode_prefix, pad_rows
from jann.errors import FileFormatError
from jann.faiss_files.wire import Reader, Writer
from jann.ops.distances import squared_norms

# Rows whose edge distances are computed at once (bounds the gather and the products).
KEY_BLOCK = 16384
# Candidates HNSW's heuristic picks an upper-level node's links from (its nearest of
# that level): enough that far rows are among them, so the links span the level.
CANDIDATES = 256
# Nodes whose candidates' pairwise keys are held at once (HEURISTIC_BLOCK x CANDIDATES**2).
HEURISTIC_BLOCK = 256
# FAISS's default efConstruction / efSearch, written for a jann graph (a search
# parameter in jann).
EF_CONSTRUCTION, EF_SEARCH = 40, 16


def read_hnsw(r: Reader, head: dict, read_index) -> dict:
    """The fields after an IndexHNSWFlat's header; `read_index` reads its storage."""
    r.array(np.float64)  # level assignment probabilities
    cumulative = r.array(np.int32)
    levels = r.array(np.int32)
    offsets = r.array(np.uint64)
    neighbors = r.array(np.int32)
    entry, _ = r.scalar("i"), r.scalar("i")  # entry point, max level
    r.scalar("i"), r.scalar("i"), r.scalar("i")  # efConstruction, efSearch, upper beam
    storage = read_index(r)
    n = head["ntotal"]
    if storage["kind"] != "flat" or storage["vectors"].shape != (n, head["d"]):
        raise FileFormatError("FAISS IndexHNSWFlat corrupt: its storage is not the flat "
                              "vectors of its ntotal rows")
    ok = (levels.size == n and offsets.size == n + 1 and cumulative.size >= 2
          and cumulative[0] == 0 and np.all(np.diff(cumulative) >= 0) and -1 <= entry < n)
    if ok and n:
        ok = (levels.min() >= 1 and levels.max() < cumulative.size and offsets[0] == 0
              and np.array_equal(np.diff(offsets.astype(np.int64)), cumulative[levels])
              and int(offsets[-1]) == neighbors.size and neighbors.min() >= -1
              and neighbors.max() < n)
    if not ok:
        raise FileFormatError("FAISS IndexHNSWFlat corrupt: its levels, offsets and "
                              "neighbours disagree")
    degree = int(cumulative[1])
    level0 = neighbors[offsets[:-1].astype(np.int64)[:, None] + np.arange(degree)]
    return {"kind": "hnsw", "d": head["d"], "metric": storage["metric"], "ids": None,
            "vectors": storage["vectors"], "neighbors": level0.reshape(n, degree),
            "levels": levels, "entry": entry}


def build_hnsw(parts: dict, index_factory):
    """The jann graph of `read_hnsw`'s parts (rows in FAISS's storage order)."""
    from jann.graph.settings import ENTRY_POINTS

    vectors, neighbors = parts["vectors"], parts["neighbors"]
    n, degree = neighbors.shape
    if degree % 2 or degree == 0:
        raise FileFormatError(f"FAISS HNSW with {degree} level-0 neighbours is not read by "
                              "jann (2M are)")
    ids = parts["ids"] if parts["ids"] is not None else np.arange(n)
    mode = parts.get("id_mode") or "sequential"
    prefix = id_mode_prefix(mode)
    index = index_factory(parts["d"], f"{prefix}HNSW{degree // 2}", parts["metric"])
    keys = np.full(neighbors.shape, np.inf, np.float32)
    for start in range(0, n, KEY_BLOCK):
        rows = slice(start, start + KEY_BLOCK)
        linked = vectors[np.maximum(neighbors[rows], 0)]
        own = vectors[rows][:, None, :]
        key = (np.sum((linked - own) ** 2, -1) if parts["metric"] == "l2"
               else -np.sum(linked * own, -1))
        keys[rows] = np.where(neighbors[rows] >= 0, key, np.inf)
    order = np.argsort(keys, axis=1, kind="stable")  # edges ranked, empty slots last
    neighbors = np.take_along_axis(neighbors, order, 1)
    keys = np.take_along_axis(keys, order, 1)
    by_level = np.argsort(-parts["levels"], kind="stable")
    entries = [parts["entry"]] if parts["entry"] >= 0 else []
    entries += [int(i) for i in by_level[:ENTRY_POINTS + 1] if i != parts["entry"]]
    entries = np.asarray((entries + [-1] * ENTRY_POINTS)[:ENTRY_POINTS], np.int32)
    capacity = fitted_capacity(n)
    return dataclasses.replace(
        index, payload=pad_rows(index.codec.encode(jnp.asarray(vectors)), capacity),
        norms=pad_rows(squared_norms(jnp.asarray(vectors)), capacity),
        neighbors=pad_rows(jnp.asarray(neighbors), capacity, -1),
        edge_keys=pad_rows(jnp.asarray(keys), capacity, np.inf),
        ids=pad_rows(jnp.asarray(ids.astype(np.asarray(index.ids).dtype)), capacity, -1),
        deleted=jnp.zeros((capacity,), bool), entries=jnp.asarray(entries),
        count=jnp.asarray(n, jnp.int32),
        n_added=jnp.asarray(int(ids.max()) + 1 if n else 0, index.n_added.dtype))


def _default_probabilities(M: int) -> np.ndarray:
    """FAISS's `HNSW::set_default_probas(M, 1 / log(M))`: level l with probability
    M**-l (1 - 1/M), down to 1e-9."""
    out, level = [], 0
    while (p := M ** -level * (1 - 1 / M)) >= 1e-9:
        out.append(p)
        level += 1
    return np.asarray(out)


def _linked_within(vectors: np.ndarray, nodes: np.ndarray, M: int, metric: str):
    """(len(nodes), M) each node's links among the others: HNSW's heuristic over its
    CANDIDATES nearest (a candidate is kept when it is nearer the node than every kept
    link), so that a level keeps the long links a greedy descent needs (with its 2M
    nearest only, faiss-cpu's descent stuck in the wrong cluster for 4% of queries);
    -1 past the last."""
    x = vectors[nodes].astype(np.float32)
    out = np.full((len(nodes), M), -1, np.int32)
    width = min(max(2 * M, CANDIDATES), len(nodes) - 1)
    if width <= 0:
        return out
    sq = np.sum(x ** 2, 1)
    rows = max(1, min(KEY_BLOCK, (1 << 26) // len(nodes)))  # a key block of <= 256 MiB
    for start in range(0, len(nodes), rows):
        block = slice(start, start + rows)
        key = -x[block] @ x.T
        if metric == "l2":
            key = 2 * key + sq[None, :] + sq[block, None]
        key[np.arange(key.shape[0]), start + np.arange(key.shape[0])] = np.inf
        near = np.argpartition(key, width - 1, axis=1)[:, :width]
        near = np.take_along_axis(near, np.argsort(
            np.take_along_axis(key, near, 1), 1, kind="stable"), 1)
        own = np.take_along_axis(key, near, 1)
        for sub in range(0, len(near), HEURISTIC_BLOCK):
            cand, own_sub = near[sub:sub + HEURISTIC_BLOCK], own[sub:sub + HEURISTIC_BLOCK]
            gathered = x[cand]
            between = -np.matmul(gathered, gathered.transpose(0, 2, 1))
            if metric == "l2":
                between = 2 * between + sq[cand][:, :, None] + sq[cand][:, None, :]
            kept = np.zeros(cand.shape, bool)
            count = np.zeros(len(cand), np.int64)
            for j in range(width):  # candidates in rank order, all nodes at once
                shadowed = np.any(kept[:, :j] & (between[:, j, :j] <= own_sub[:, j, None]), 1)
                kept[:, j] = (count < M) & ~shadowed
                count += kept[:, j]
            first = np.argsort(~kept, 1, kind="stable")[:, :M]
            links = np.where(np.take_along_axis(kept, first, 1),
                             nodes[np.take_along_axis(cand, first, 1)], -1)
            out[start + sub:start + sub + len(cand), :links.shape[1]] = links
    return out


def write_hnsw(w: Writer, index, write_header, write_flat, refuse):
    """A jann graph over float vectors as an IndexHNSWFlat (rows 0..n-1)."""
    from jann.quantizers.identity import IdentityCodec

    if index.binary or not isinstance(index.codec, IdentityCodec):
        refuse(index, "FAISS's IndexHNSWFlat stores float vectors; this graph stores codes")
    n = int(index.count)
    if np.asarray(index.deleted)[:n].any():
        refuse(index, "it holds removed rows: jann.graph.compact(index) first")
    if index.graph_degree % 2 or index.graph_degree < 4:
        refuse(index, f"FAISS's HNSW has 2M >= 4 level-0 neighbours; this graph has "
                      f"{index.graph_degree}")
    M = index.graph_degree // 2
    vectors = np.asarray(index.codec.decode(index.payload[:n]), np.float32)
    probabilities = _default_probabilities(M)
    cumulative = np.concatenate([[0], np.cumsum([2 * M] + [M] * (len(probabilities) - 1))])
    order = np.random.default_rng(0).permutation(n)
    sizes = [n]
    while sizes[-1] // M >= 1 and len(sizes) < len(probabilities):
        sizes.append(sizes[-1] // M)
    top = np.zeros(n, np.int64)  # each row's top level
    for level, size in enumerate(sizes):
        top[order[:size]] = level
    offsets = np.concatenate([[0], np.cumsum(cumulative[top + 1])])
    neighbors = np.full(int(offsets[-1]), -1, np.int32)
    level0 = np.asarray(index.neighbors)[:n]  # FAISS stops at a row's first empty slot
    level0 = np.take_along_axis(level0, np.argsort(level0 < 0, 1, kind="stable"), 1)
    neighbors[offsets[:-1, None] + np.arange(2 * M)] = level0
    for level, size in enumerate(sizes[1:], 1):
        nodes = order[:size]
        neighbors[offsets[nodes][:, None] + cumulative[level] + np.arange(M)] = \
            _linked_within(vectors, nodes, M, index.metric)
    w.fourcc(b"IHNf")
    write_header(w, index.d, n, index.metric)
    w.array(probabilities, np.float64)
    w.array(cumulative, np.int32)
    w.array(top + 1, np.int32)
    w.array(offsets, np.uint64)
    w.array(neighbors, np.int32)
    w.scalar("i", int(order[0]) if n else -1)  # entry point: a row of the top level
    w.scalar("i", len(sizes) - 1 if n else -1)  # max level
    w.scalar("i", EF_CONSTRUCTION)
    w.scalar("i", EF_SEARCH)
    w.scalar("i", 1)  # upper beam (unused)
    write_flat(w, vectors, index.metric)
