"""Graph index: a fixed-out-degree proximity graph searched by a batched beam search
(the design of cuVS's CAGRA, FAISS's GPU graph index; FAISS's CPU `IndexHNSW*` strings
build it too).

Storage: every row holds a code (`codec.encode` of the vector: raw float32 / float16 for
"HNSW32" / "HNSW32,Flat", SQ or PQ codes for "HNSW32,SQ8" / "HNSW32,PQ16"; packed bits
for the binary graph "BHNSW32"), its id, a tombstone bit and exactly `graph_degree`
out-edges (row numbers, -1 for an empty slot) with the distance of each edge.

Build (every `add`, from empty or not; no separate build step):
1. candidates: the `intermediate_degree` nearest stored rows of each new vector. While
   the graph holds fewer than `EXACT_BUILD_MAX` rows they are exact (the streamed
   `jann.ops.knn_scan` / `knn_hamming_scan` over the stored rows, new ones included;
   for large adds of vectors of 512+ dimensions whose variance lies mostly in 128
   principal directions, the exact distances of a pool of 2x as many rows nearest in
   that projection, `jann.ops.projection`: a sixth of the products); beyond, a beam
   search of the existing graph (ef = intermediate_degree) merged with
   the exact neighbours inside the added batch (the way HNSW and CAGRA's `extend`
   insert), so adds stay O(batch * search) instead of O(batch * n). A large add is
   linked `INSERT_BATCH` rows at a time (a `lax.fori_loop`), each batch into the graph
   the earlier ones built.
2. pruning to `graph_degree`: HNSW's heuristic (FAISS `shrink_neighbor_list`: keep a
   candidate unless an already kept one is closer to it than the node is), then the
   slots left are filled with the nearest pruned candidates, so every node has exactly
   `graph_degree` edges as in CAGRA; the list is ordered kept-first.
3. reverse edges: each new edge u -> v proposes v -> u. The first half of v's list (its
   most diverse forward edges) is kept; the second half is re-chosen as the nearest of
   (its current second half, the proposals), so hubs cannot lose their forward edges
   and new rows always get in-edges.
4. connectivity repair: a breadth-first search from the fixed entry points; a row it
   cannot reach gets an in-edge from the first reachable row of its own list (or any
   reachable row), written into a tail slot; repeated until every row is reachable
   (at most `REPAIR_ROUNDS` rounds; the tests check the result).
A small add (its new edges reach at most `LOCAL_LINK_SHARE` of the rows: streaming)
searches the graph for its candidates from `STREAM_EXACT_MAX` rows on (exact
candidates read every stored vector per add) and does steps 3-4 locally: only the lists its new edges point to are rewritten, a new row
none of whose proposals was taken gets an in-edge from its first neighbour, and the
repair of step 4 runs once per `REPAIR_PERIOD` rows (between repairs an old row whose
last in-edge a proposal replaced can be unreachable, as in HNSW).

Search: `ef` (alias `efSearch`, CAGRA's itopk) candidates per query, sorted. Each query
starts from the ef nearest of a shared set of start rows ("nearest", the default: the
fixed entries plus ENTRY_SAMPLE rows spread over storage, ranked by one matrix product,
a stand-in for HNSW's upper layers; "random": the fixed entries plus ef rows sampled
with the index's key, as CAGRA; "fixed": the fixed entries only). Queries are searched
in blocks grouped by their nearest start row, so a block walks one region of the graph
and its fetched rows stay in cache. Each iteration expands the `search_width` best
unexpanded candidates (default 2), keeps their neighbours that the query has not
visited (a per-query bitset; a row never enters the beam twice), computes the distances
of the first `gather_fraction` * width * degree of them (default: one list's worth; the
others stay unvisited for a later expansion) with one gather and batched dot products
for the whole block, and merges them in. The loop (`lax.while_loop`, inside jit) stops
when no query of the block has an unexpanded candidate, or after `max_iterations`
(default ef / width + 8). ef < k is clamped to k. `selector=` is applied during the
search: rows it rejects (and tombstoned rows) are traversed but never returned, and the
k best accepted rows seen are kept apart. On CPU a block is 32 queries (cache); on
accelerators it is sized by memory (up to MAX_QUERY_BLOCK).

Updates: `add` inserts as above; `remove_ids` sets tombstones (rows stay in the graph as
waypoints, never returned); `compact` rebuilds the graph over the live rows only;
`reconstruct` decodes a row (raw vectors exact, codes approximate, as FAISS).

Factory mapping (FAISS's level 0 has 2*M edges, the upper levels are replaced by random
entry points): "HNSW<M>" -> graph_degree 2*M, intermediate_degree 3*M;
"CAGRA<graph_degree>[,<intermediate_degree>]" sets both (intermediate defaults to
2 * graph_degree). Search parameters: ef / efSearch, search_width, max_iterations, entry.

Modules: `settings` (the tuning constants; a module that reads one imports it by name,
so lowering one for a test patches the reading module, e.g. `jann.graph.building` for
the build bounds), `edges` (pure functions on neighbour arrays: reverse edges,
reachability, repair), `building` (`add_core` and its helpers, a mixin), `searching`
(the beam search, a mixin), `index` (the `GraphIndex` pytree), `maintenance`
(`compact`, `live_rows`, `emptied`, `build`).
"""

from __future__ import annotations

from jann.graph.edges import reachable
from jann.graph.index import GraphIndex
from jann.graph.maintenance import build, compact, emptied, live_rows
from jann.graph.settings import (
    CPU_QUERY_BLOCK, DEFAULT_EF, DEFAULT_WIDTH, EF_VALUES, ENTRIES, ENTRY_POINTS,
    ENTRY_SAMPLE, EXACT_BUILD_MAX, INITIAL_QUERY_BLOCK, INSERT_BATCH, LOCAL_LINK_SHARE,
    MAX_QUERY_BLOCK, PROJECTION_DIMS, PROJECTION_MIN_D, PROJECTION_MIN_ENERGY,
    PROJECTION_MIN_QUERIES, PROJECTION_POOL, PRUNE_BYTES, REPAIR_PERIOD, REPAIR_ROUNDS,
    RERANK_QUERY_BLOCK, SEARCH_BLOCK_BYTES, STREAM_EXACT_MAX)

__all__ = ["CPU_QUERY_BLOCK", "DEFAULT_EF", "DEFAULT_WIDTH", "EF_VALUES", "ENTRIES",
           "ENTRY_POINTS", "ENTRY_SAMPLE", "EXACT_BUILD_MAX", "GraphIndex",
           "INITIAL_QUERY_BLOCK", "INSERT_BATCH", "LOCAL_LINK_SHARE", "MAX_QUERY_BLOCK",
           "PROJECTION_DIMS", "PROJECTION_MIN_D", "PROJECTION_MIN_ENERGY",
           "PROJECTION_MIN_QUERIES", "PROJECTION_POOL", "PRUNE_BYTES", "REPAIR_PERIOD",
           "REPAIR_ROUNDS", "RERANK_QUERY_BLOCK", "SEARCH_BLOCK_BYTES", "STREAM_EXACT_MAX",
           "build", "compact", "emptied", "live_rows", "reachable"]
