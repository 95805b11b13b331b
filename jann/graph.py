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
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jann import _storage, api
from jann._inputs import as_binary_codes, as_vectors
from jann._pytree import pytree_dataclass
from jann.errors import InvalidInputError
from jann.ops import distances as dist_ops
from jann.ops import hamming
from jann.ops.knn import knn_scan, map_query_blocks
from jann.ops.projection import pca_basis, projected_pool
from jann.ops.topk import smallest_k_padded
from jann.quantizers.identity import IdentityCodec
from jann.quantizers.layout import encoded_row

__all__ = ["EXACT_BUILD_MAX", "GraphIndex", "build", "compact", "emptied", "live_rows",
           "reachable"]

# Until the graph holds this many rows an add finds its candidates by exact k-NN over
# the stored rows (O(n) per added row); beyond, by searching the graph built so far, in
# batches of INSERT_BATCH rows. Measured, Fashion-MNIST 60000 x 784 HNSW16 on 2 cores:
# exact throughout 43.7 s, recall@10 0.951 at ef 16; a bound of 32768 rows 26.8 s, 0.946;
# 16384 rows 25.5 s, 0.943. The exact graph is kept up to this size for its recall (and
# since candidates come from a PCA projection, below, it builds in 23.1 s, still 0.951).
EXACT_BUILD_MAX = 1 << 17
INSERT_BATCH = 1 << 12
# Exact candidates of large adds (PROJECTION_MIN_QUERIES rows or more) of vectors of
# PROJECTION_MIN_D dimensions or more come from a pool of PROJECTION_POOL * k rows
# nearest in the top PROJECTION_DIMS principal directions, when those hold
# PROJECTION_MIN_ENERGY of the variance (`_nearest_stored`).
PROJECTION_DIMS = 128
PROJECTION_MIN_D = 4 * PROJECTION_DIMS
PROJECTION_MIN_QUERIES = 8192
PROJECTION_POOL = 2
PROJECTION_MIN_ENERGY = 0.9
RERANK_QUERY_BLOCK = 256
ENTRY_POINTS = 16
REPAIR_ROUNDS = 8
# Rows pruned per step: a (block, K, K) distance table plus the (block, K, d) vectors.
PRUNE_BYTES = 64 << 20
# Search query block: the visited bitsets and the gathered neighbour vectors of one
# iteration stay under this many bytes.
SEARCH_BLOCK_BYTES = 96 << 20
MAX_QUERY_BLOCK = 1024
# On CPU a block of 32 queries keeps an iteration's gathered rows in cache (Fashion-MNIST
# HNSW16, 2 cores: 6.9k QPS at 32 vs 3.6k at 1024); XLA runs such small loops on one core.
CPU_QUERY_BLOCK = 32
# Queries whose starting beams are computed at once (a (block, ENTRY_SAMPLE) matrix).
INITIAL_QUERY_BLOCK = 1024
# Rows sampled as starting points for entry="nearest", the stand-in for HNSW's upper
# layers: one matrix product finds each query's nearest ones.
ENTRY_SAMPLE = 512
DEFAULT_EF = 64
DEFAULT_WIDTH = 2
ENTRIES = ("nearest", "random", "fixed")


def _pow2_floor(x: int) -> int:
    return 1 << max(0, int(x).bit_length() - 1)


@pytree_dataclass(
    data=("codec", "payload", "norms", "neighbors", "edge_keys", "ids", "deleted", "entries",
          "count", "n_added", "status", "rng"),
    meta=("metric", "id_mode", "graph_degree", "intermediate_degree", "binary", "description"))
@dataclasses.dataclass(frozen=True)
class GraphIndex(_storage.StatusWord):
    """Fixed-degree graph index. Array fields are leaves; configuration is static.

    codec:     how rows are stored (IdentityCodec, ScalarQuantizer, ProductQuantizer);
               None for binary codes.
    payload:   (capacity, *code_shape) stored codes.  norms: (capacity,) squared norms of
               the decoded rows (l2).
    neighbors: (capacity, graph_degree) int32 out-edges (rows), -1 = empty slot.
    edge_keys: (capacity, graph_degree) float32 distance key of each edge (squared l2,
               -inner product, or Hamming), +inf for empty slots.
    ids:       (capacity,) ids.  deleted: (capacity,) tombstones.
    entries:   (ENTRY_POINTS,) int32 fixed entry rows (-1 = none).
    count:     () int32 rows used (tombstoned ones included, until `compact`).
    n_added:   () int32 rows ever added: the next sequential id.
    status:    () int32 refused-write bits.  rng: (2,) uint32 key data for sampling.
    """

    codec: object
    payload: jax.Array
    norms: jax.Array
    neighbors: jax.Array
    edge_keys: jax.Array
    ids: jax.Array
    deleted: jax.Array
    entries: jax.Array
    count: jax.Array
    n_added: jax.Array
    status: jax.Array
    rng: jax.Array
    metric: str = "l2"
    id_mode: str = "sequential"
    graph_degree: int = 64
    intermediate_degree: int = 128
    binary: bool = False
    description: str = "CAGRA64,128"

    # --- construction ---------------------------------------------------------------
    @classmethod
    def create(cls, d: int, graph_degree: int = 64, intermediate_degree: int | None = None,
               codec=None, *, metric: str = "l2", id_mode: str = "sequential",
               binary: bool = False, description: str | None = None, key=None):
        """An empty graph index over d-dimensional vectors (d bits when binary).

        codec: None = float32 vectors (IdentityCodec); any jann codec otherwise.
        key: `jax.random` key for the random entry points (default key 0)."""
        graph_degree = int(graph_degree)
        intermediate_degree = 2 * graph_degree if intermediate_degree is None else \
            int(intermediate_degree)
        if graph_degree < 1:
            raise InvalidInputError(f"graph_degree must be >= 1, got {graph_degree}")
        if intermediate_degree < graph_degree:
            raise InvalidInputError(
                f"intermediate_degree ({intermediate_degree}) must be >= graph_degree "
                f"({graph_degree})")
        if binary:
            if d % 8:
                raise InvalidInputError(f"binary indexes need d (bits) to be a multiple of "
                                        f"8, got {d}")
            codec, code = None, jax.ShapeDtypeStruct((0, d // 8), jnp.uint8)
            metric = "hamming"
        else:
            if codec is None:
                codec = IdentityCodec.create(d)
            code = encoded_row(codec, d)
        key = jax.random.key(0) if key is None else key
        return cls(
            codec=codec, payload=jnp.zeros((0,) + code.shape[1:], code.dtype),
            norms=jnp.zeros((0,), jnp.float32),
            neighbors=jnp.zeros((0, graph_degree), jnp.int32),
            edge_keys=jnp.zeros((0, graph_degree), jnp.float32),
            ids=_storage.empty_ids(0), deleted=jnp.zeros((0,), bool),
            entries=jnp.full((ENTRY_POINTS,), -1, jnp.int32),
            count=jnp.zeros((), jnp.int32), n_added=jnp.zeros((), jnp.int32),
            status=jnp.zeros((), jnp.int32), rng=jax.random.key_data(key),
            metric=metric, id_mode=id_mode, graph_degree=graph_degree,
            intermediate_degree=intermediate_degree, binary=binary,
            description=description or f"CAGRA{graph_degree},{intermediate_degree}")

    @property
    def d(self) -> int:
        return 8 * self.payload.shape[1] if self.binary else self.codec.d

    @property
    def capacity(self) -> int:
        return self.payload.shape[0]

    @property
    def is_trained(self) -> bool:
        return self.binary or bool(self.codec.is_trained)

    def describe(self) -> str:
        prefix = {"sequential": "", "idmap": "IDMap,", "idmap2": "IDMap2,"}[self.id_mode]
        return prefix + self.description

    def grown(self, capacity: int) -> GraphIndex:
        pad = _storage.pad_rows
        return dataclasses.replace(
            self, payload=pad(self.payload, capacity), norms=pad(self.norms, capacity),
            neighbors=pad(self.neighbors, capacity, -1),
            edge_keys=pad(self.edge_keys, capacity, np.inf), ids=pad(self.ids, capacity, -1),
            deleted=pad(self.deleted, capacity, False))

    def train(self, x, *, key=None, **kwargs):
        """Train the codec (SQ / PQ); the graph itself needs no training."""
        key = jax.random.key(0) if key is None else key
        key_codec, key_graph = jax.random.split(key)
        if self.binary:
            return dataclasses.replace(self, rng=jax.random.key_data(key_graph))
        codec = self.codec.train(self._prepare(jnp.asarray(x, jnp.float32)), key=key_codec,
                                 **kwargs)
        return dataclasses.replace(self, codec=codec, rng=jax.random.key_data(key_graph))

    # --- input hooks used by jann.api -------------------------------------------------
    def as_input(self, x, name: str):
        """Binary indexes take packed uint8 codes (n, d / 8); float ones any real array."""
        if not self.binary:
            return as_vectors(x, self.d, name)
        return as_binary_codes(x, self.d, name)

    def check_add(self, n: int):
        """The first add builds the graph: it needs more rows than the degree."""
        if _storage.host_int(self.count) == 0 and n <= self.graph_degree:
            raise InvalidInputError(
                f"cannot build a graph of degree {self.graph_degree} from {n} vectors: the "
                f"first add needs at least graph_degree + 1 = {self.graph_degree + 1} "
                "(lower the degree, or add more vectors at once)")

    def ntotal_live(self):
        return jnp.sum(self.live() & ~self.deleted, dtype=jnp.int32)

    # --- helpers --------------------------------------------------------------------
    def live(self):
        return _storage.live_mask(self.capacity, self.count)

    def _prepare(self, x):
        if self.binary:
            return x.astype(jnp.uint8)
        return dist_ops.normalize_L2(x) if self.metric == "cosine" else x.astype(jnp.float32)

    prepare_queries = _prepare

    @property
    def _scan_metric(self) -> str:
        return "l2" if self.metric == "l2" else "ip"

    def _query_form(self, q):
        """Prepared queries as the distance routines take them (words for binary)."""
        return hamming.as_words(q) if self.binary else q

    def _rows_form(self, rows):
        """Stored rows (any shape of row numbers) as vectors / words, for distances."""
        safe = jnp.clip(rows, 0, max(self.capacity - 1, 0))
        codes = self.payload[safe]
        if self.binary:
            flat = codes.reshape(-1, codes.shape[-1])
            return hamming.as_words(flat).reshape(*rows.shape, -1)
        flat = codes.reshape((-1,) + self.payload.shape[1:])
        return self.codec.decode(flat).reshape(*rows.shape, -1)

    def _keys_to(self, qf, rows):
        """Distance keys (smaller = nearer) of queries qf (nq, .) to rows (nq, C): full
        squared l2, -inner product, or Hamming; +inf where rows < 0."""
        x = self._rows_form(rows)
        if self.binary:
            return self._keys(rows, hamming=jnp.sum(jax.lax.population_count(
                jnp.bitwise_xor(qf[:, None, :], x)).astype(jnp.int32), -1))
        return self._keys(rows, qf, jnp.einsum("qd,qcd->qc", qf, x,
                                               preferred_element_type=jnp.float32))

    def _keys_to_shared(self, qf, rows, x):
        """`_keys_to` for S rows shared by all queries (x: their vectors / words): a
        matrix product rather than a per-query gather. Keys (nq, S)."""
        if self.binary:
            return self._keys(rows[None, :], hamming=jnp.sum(jax.lax.population_count(
                jnp.bitwise_xor(qf[:, None, :], x[None])).astype(jnp.int32), -1))
        return self._keys(rows[None, :], qf,
                          jnp.matmul(qf, x.T, preferred_element_type=jnp.float32))

    def _keys(self, rows, qf=None, dots=None, hamming=None):
        """Keys from query-row dot products (or Hamming distances); +inf for NaN and for
        rows < 0. rows broadcasts against the (nq, C) dots."""
        if hamming is not None:
            keys = hamming.astype(jnp.float32)
        elif self.metric == "l2":
            safe = jnp.clip(rows, 0, max(self.capacity - 1, 0))
            keys = self.norms[safe] - 2.0 * dots + jnp.sum(qf * qf, -1, keepdims=True)
            keys = jnp.maximum(keys, 0.0)
        else:
            keys = -dots
        keys = jnp.where(jnp.isnan(keys), jnp.inf, keys)
        return jnp.where(rows >= 0, keys, jnp.inf)

    def _exact_candidates(self, q, k, valid, n_rows=None):
        """(keys, rows) of the k nearest stored rows among `valid`, exact; n_rows: only
        the leading rows exist (the others' tiles are not computed)."""
        if self.binary:
            dist, rows = hamming.knn_hamming_scan(q, self.payload, k, xb_valid=valid)
            keys = jnp.where(rows < 0, jnp.inf, dist.astype(jnp.float32))
            return keys, rows
        decoded = self.codec.decode(self.payload)
        dist, rows = knn_scan(q, decoded, k, self._scan_metric, xb_sqnorms=self.norms,
                              xb_valid=valid, n_rows=n_rows)
        keys = dist if self.metric == "l2" else -dist
        return jnp.where(rows < 0, jnp.inf, keys), rows

    def _projects(self, n_queries: int) -> bool:
        """Whether `_nearest_stored` may filter by a PCA projection (static)."""
        return (not self.binary and self.metric in ("l2", "cosine")
                and self.d >= PROJECTION_MIN_D and n_queries >= PROJECTION_MIN_QUERIES)

    def _nearest_stored(self, q, k, usable, n_rows):
        """`_exact_candidates`, or for a large add of high-dimensional vectors whose
        variance lies mostly in PROJECTION_DIMS directions, the exact keys of a pool of
        PROJECTION_POOL * k rows found in that PCA projection (ops.projection): a sixth of
        the products on Fashion-MNIST, where the pool holds 0.988 of the exact
        neighbours. Graph builds tolerate approximate candidate lists (CAGRA builds its
        from IVF-PQ); low-variance-share data keep the exact scan."""
        if not self._projects(q.shape[0]):
            return self._exact_candidates(q, k, usable, n_rows=n_rows)
        decoded = self.codec.decode(self.payload)
        mean, basis, energy = pca_basis(decoded, n_rows, PROJECTION_DIMS)
        pool = min(PROJECTION_POOL * k, self.capacity)

        def projected():
            rows = projected_pool(q, decoded, pool, mean, basis, xb_valid=usable,
                                  n_rows=n_rows)
            keys = map_query_blocks(lambda a: self._keys_to(*a), (self._query_form(q), rows),
                                    RERANK_QUERY_BLOCK)
            keys, cols = smallest_k_padded(keys, k)
            return keys, jnp.where(
                cols >= 0, jnp.take_along_axis(rows, jnp.maximum(cols, 0), 1), -1)

        return jax.lax.cond(energy >= PROJECTION_MIN_ENERGY, projected,
                            lambda: self._exact_candidates(q, k, usable, n_rows=n_rows))

    # --- add ------------------------------------------------------------------------
    def add_core(self, x, n_valid, ids, valid_rows):
        q = self._prepare(x)
        n = q.shape[0]
        if ids is None:
            ids = self.n_added + jnp.arange(n, dtype=self.ids.dtype)
        status = _storage.append_status(self, n_valid, ids, valid_rows)
        accept = status == 0
        new_ok = accept & (jnp.arange(n) < n_valid)
        q = jnp.where(valid_rows[:, None], q, jnp.zeros((), q.dtype))
        if self.binary:
            codes, norms = q, jnp.zeros((n,), jnp.float32)
        else:
            codes = self.codec.encode(q)
            norms = dist_ops.squared_norms(self.codec.decode(codes))
        payload, stored_norms, stored_ids, deleted = _storage.append_rows(
            (self.payload, self.norms, self.ids, self.deleted), self.count,
            (codes, norms, ids, jnp.zeros((n,), bool)), n_valid, accept)
        rows_new = self.count + jnp.arange(n, dtype=jnp.int32)
        count = jnp.where(accept, self.count + n_valid, self.count).astype(jnp.int32)
        grown = dataclasses.replace(self, payload=payload, norms=stored_norms, ids=stored_ids,
                                    deleted=deleted, count=count)

        one_pass = self.capacity <= EXACT_BUILD_MAX or n <= INSERT_BATCH
        head = n if one_pass else INSERT_BATCH  # a new graph's entries: rows linked first
        entries = jnp.where(self.count == 0, grown._first_entries(
            q[:head], rows_new[:head], new_ok[:head]), self.entries)
        grown = dataclasses.replace(grown, entries=entries)
        if one_pass:
            neighbors, edge_keys = grown._link(q, rows_new, new_ok, count)
        else:
            neighbors, edge_keys = grown._link_in_batches(q, rows_new, new_ok)
        n_added = jnp.where(accept, self.n_added + n_valid, self.n_added).astype(jnp.int32)
        return dataclasses.replace(grown, neighbors=neighbors, edge_keys=edge_keys,
                                   entries=entries, n_added=n_added,
                                   status=self.status | status)

    def _link(self, q, rows_new, new_ok, linked):
        """(neighbors, edge_keys) with the appended rows `rows_new` (those `new_ok`)
        linked in: candidates, pruning, reverse edges, connectivity repair. Only the rows
        below `linked` take part (rows appended for a later batch are not linked yet)."""
        cand_keys, cand_rows = self._candidates(q, rows_new, new_ok, linked)
        fwd_rows, fwd_keys = self._prune(cand_rows, cand_keys)
        target = jnp.where(new_ok, rows_new, self.capacity)
        neighbors = self.neighbors.at[target].set(fwd_rows, mode="drop")
        edge_keys = self.edge_keys.at[target].set(fwd_keys, mode="drop")
        neighbors, edge_keys = _reverse_edges(neighbors, edge_keys, rows_new, new_ok,
                                              fwd_rows, fwd_keys)
        return _repair(neighbors, edge_keys, self.entries, linked)

    def _link_in_batches(self, q, rows_new, new_ok):
        """`_link` over INSERT_BATCH rows at a time, each batch linked into the graph the
        earlier ones built: past EXACT_BUILD_MAX rows a batch searches the graph for its
        candidates, so a large add costs O(n * search) rather than O(n^2), and the exact
        neighbours inside a batch cost INSERT_BATCH^2 rather than n^2."""
        S = INSERT_BATCH
        n = q.shape[0]
        pad = -n % S
        if pad:
            q = jnp.pad(q, ((0, pad), (0, 0)))
            rows_new = jnp.concatenate([rows_new, rows_new[-1] + 1 + jnp.arange(pad,
                                                                                 dtype=jnp.int32)])
            new_ok = jnp.pad(new_ok, (0, pad))
        n_batches = (jnp.sum(new_ok, dtype=jnp.int32) + S - 1) // S

        def body(i, state):
            neighbors, edge_keys = state
            part = [jax.lax.dynamic_slice_in_dim(a, i * S, S) for a in (q, rows_new, new_ok)]
            linked = jnp.minimum(part[1][-1] + 1, self.count)
            current = dataclasses.replace(self, neighbors=neighbors, edge_keys=edge_keys)
            return current._link(*part, linked)

        return jax.lax.fori_loop(0, n_batches, body, (self.neighbors, self.edge_keys))

    def _candidates(self, q, rows_new, new_ok, linked):
        """(keys, rows) (n, K): each new row's K nearest other rows below `linked`."""
        K = self.intermediate_degree
        usable = self.live() & ~self.deleted & (jnp.arange(self.capacity) < linked)

        def exact():
            return self._nearest_stored(q, K + 1, usable, linked)

        def searched():
            return self._searched_candidates(q, rows_new, new_ok, usable)

        if self.capacity <= EXACT_BUILD_MAX:
            keys, rows = exact()
        else:
            keys, rows = jax.lax.cond(rows_new[0] < EXACT_BUILD_MAX, exact, searched)
        keys = jnp.where(rows == rows_new[:, None], jnp.inf, keys)  # not its own neighbour
        keys, cols = smallest_k_padded(keys, K)
        rows = jnp.where(cols >= 0, jnp.take_along_axis(rows, jnp.maximum(cols, 0), 1), -1)
        return keys, rows

    def _searched_candidates(self, q, rows_new, new_ok, usable):
        """(keys, rows) (n, K + 1): the K nearest rows the graph search finds among the
        rows stored before this add, merged with the exact neighbours inside the batch."""
        K = self.intermediate_degree
        old = usable & (jnp.arange(self.capacity) < rows_new[0])
        g_keys, g_rows = self._beam_search(
            self._query_form(q), K, ef=K, width=DEFAULT_WIDTH, max_iterations=K,
            entry="nearest", seed=0,
            allowed=lambda r: old[jnp.maximum(r, 0)], n_queries=jnp.sum(new_ok),
            linked=rows_new[0])
        new_codes = self.payload[jnp.clip(rows_new, 0, self.capacity - 1)]
        batch = dataclasses.replace(self, payload=new_codes,
                                    norms=self.norms[jnp.clip(rows_new, 0, self.capacity - 1)])
        b_keys, b_cols = batch._exact_candidates(q, min(K + 1, q.shape[0]), new_ok)
        b_rows = jnp.where(b_cols >= 0, rows_new[jnp.maximum(b_cols, 0)], -1)
        keys, cols = smallest_k_padded(jnp.concatenate([g_keys, b_keys], 1), K + 1)
        rows = jnp.concatenate([g_rows, b_rows], 1)
        return keys, jnp.where(cols >= 0, jnp.take_along_axis(rows, jnp.maximum(cols, 0), 1),
                               -1)

    def _pairwise(self, rows):
        """(B, K, K) keys between the candidate rows of each node."""
        if self.binary:
            x = self._rows_form(rows)
            keys = jnp.sum(jax.lax.population_count(jnp.bitwise_xor(
                x[:, :, None, :], x[:, None, :, :])).astype(jnp.int32), -1).astype(jnp.float32)
        else:
            # One (K, d) x (d, K) product per node: on CPU 3x faster than the batched
            # product of the whole block (20000 x 784 HNSW16 build: prune 3.2 -> ~1 s).
            def gram(node_rows):
                x = self._rows_form(node_rows)
                return jnp.matmul(x, x.T, preferred_element_type=jnp.float32), \
                    jnp.sum(x * x, -1)

            dots, n = jax.lax.map(gram, rows)
            if self.metric == "l2":
                keys = n[:, :, None] + n[:, None, :] - 2.0 * dots
            else:
                keys = -dots
        valid = rows >= 0
        return jnp.where(valid[:, :, None] & valid[:, None, :], keys, jnp.inf)

    def _prune(self, cand_rows, cand_keys):
        """HNSW's heuristic to graph_degree, then the pruned candidates as filler."""
        R = self.graph_degree
        n, K = cand_rows.shape
        per_row = K * K * 4 + K * max(self.d, 1) * 4
        block = int(min(n, max(1, _pow2_floor(PRUNE_BYTES // per_row))))

        def prune_block(rows_keys):
            rows, keys = rows_keys
            pair = self._pairwise(rows)
            valid = rows >= 0

            def step(j, state):
                kept, n_kept = state
                closer = jnp.any(kept & (pair[:, j, :] < keys[:, j][:, None]), axis=1)
                keep = valid[:, j] & ~closer & (n_kept < R)
                return kept.at[:, j].set(keep), n_kept + keep

            kept, _ = jax.lax.fori_loop(
                0, K, step, (jnp.zeros(rows.shape, bool), jnp.zeros(rows.shape[0], jnp.int32)))
            rank = jnp.where(kept, 0, jnp.where(valid, 1, 2)) * K + jnp.arange(K)
            order = jnp.argsort(rank, axis=1)[:, :R]
            return jnp.take_along_axis(rows, order, 1), jnp.take_along_axis(keys, order, 1)

        out_rows, out_keys = _map_blocks(prune_block, (cand_rows, cand_keys), block)
        return out_rows, out_keys

    def _first_entries(self, q, rows_new, new_ok):
        """Entry rows of a new graph: the row nearest the batch mean (an approximate
        medoid) and rows spread evenly over the batch."""
        n = q.shape[0]
        n_valid = jnp.sum(new_ok)
        qf = self._query_form(q)
        if self.binary:
            centre = hamming.as_words(hamming.pack_bits(jnp.sum(
                jnp.where(new_ok[:, None], hamming.unpack_bits(q), False), 0)[None, :]
                * 2 > n_valid))
            dist = jnp.sum(jax.lax.population_count(jnp.bitwise_xor(qf, centre)), -1)
        else:
            centre = jnp.sum(jnp.where(new_ok[:, None], qf, 0.0), 0) / jnp.maximum(n_valid, 1)
            dist = jnp.sum((qf - centre) ** 2, -1)
        medoid = jnp.argmin(jnp.where(new_ok, dist, jnp.inf))
        spread = (jnp.arange(1, ENTRY_POINTS) * n_valid) // ENTRY_POINTS
        picks = jnp.concatenate([medoid[None], spread]).astype(jnp.int32)
        picks = jnp.where(jnp.arange(ENTRY_POINTS) < n_valid, picks, n)
        rows = jnp.where(picks < n, rows_new[jnp.minimum(picks, n - 1)], -1)
        return _unique_rows(rows)

    # --- search ---------------------------------------------------------------------
    def search_parameter_space(self) -> dict[str, tuple]:
        """What `jann.autotune` tries: the beam width (results come from the beam)."""
        return {"ef": (16, 32, 64, 128, 256, 512)}

    def check_search_params(self, ef=None, efSearch=None, search_width=None,
                            max_iterations=None, entry=None, gather_fraction=None, **unknown):
        if unknown:
            raise InvalidInputError(
                f"{self.describe()} takes ef (efSearch), search_width, max_iterations, "
                f"entry and gather_fraction, not {sorted(unknown)}")
        if ef is not None and efSearch is not None and ef != efSearch:
            raise InvalidInputError("give ef or efSearch (the same knob), not both")
        ef = efSearch if ef is None else ef
        out = {"ef": _positive_int(DEFAULT_EF if ef is None else ef, "ef"),
               "width": _positive_int(DEFAULT_WIDTH if search_width is None else search_width,
                                      "search_width"),
               "entry": "nearest" if entry is None else entry}
        if out["entry"] not in ENTRIES:
            raise InvalidInputError(f"entry must be one of {ENTRIES}, got {entry!r}")
        if max_iterations is not None:
            out["max_iterations"] = _positive_int(max_iterations, "max_iterations")
        if gather_fraction is not None:
            if isinstance(gather_fraction, bool) or not isinstance(
                    gather_fraction, (int, float)) or not 0 < gather_fraction <= 1:
                raise InvalidInputError(
                    f"gather_fraction must be a number in (0, 1], got {gather_fraction!r}")
            out["gather_fraction"] = float(gather_fraction)
        return out

    # Padded query rows (`n_queries` given) are not searched.
    skips_padded_queries = True

    def search_core(self, xq, k: int, selector=None, ef: int = DEFAULT_EF,
                    width: int = DEFAULT_WIDTH, max_iterations: int | None = None,
                    entry: str = "nearest", seed: int = 0, gather_fraction: float | None = None,
                    n_queries=None, backend: str = "auto"):
        """backend: the beam search has no kernel; XLA whatever it says."""
        fill = -jnp.inf if self.metric in ("ip", "cosine") else jnp.inf
        if self.capacity == 0:
            shape = (xq.shape[0], k)
            return jnp.full(shape, fill, jnp.float32), jnp.full(shape, -1, self.ids.dtype)
        L = max(ef, k)  # ef < k is clamped: the beam must hold k results
        # Measured on Fashion-MNIST: queries converge in about ef / width iterations; a
        # block runs until its slowest query is done, so a looser cap mostly buys time.
        max_iterations = max_iterations or L // width + 8
        qf = self._query_form(self._prepare(xq))
        allowed = None
        if selector is not None:
            ok = ~self.deleted & selector(self.ids)
            allowed = lambda r: ok[jnp.clip(r, 0, max(self.capacity - 1, 0))]
        keys, rows = self._beam_search(qf, k, ef=L, width=width,
                                       max_iterations=max_iterations, entry=entry, seed=seed,
                                       allowed=allowed, gather_fraction=gather_fraction,
                                       n_queries=n_queries)
        ids = jnp.where(rows >= 0, self.ids[jnp.clip(rows, 0, max(self.capacity - 1, 0))], -1)
        if self.metric in ("ip", "cosine"):
            return jnp.where(rows >= 0, -keys, -jnp.inf), ids
        return jnp.where(rows >= 0, keys, jnp.inf), ids

    def _query_block(self, width: int) -> int:
        words = -(-max(self.capacity, 1) // 32)
        per_query = 4 * words + width * self.graph_degree * (
            4 * (max(self.d, 1) if not self.binary else self.d // 32 + 1) + 16)
        return int(max(8, min(MAX_QUERY_BLOCK, _pow2_floor(SEARCH_BLOCK_BYTES // per_query))))

    def _start_rows(self, L, entry, seed, linked=None):
        """Rows shared by every query as starting candidates: the fixed entries, plus
        ENTRY_SAMPLE rows spread evenly over the first `linked` rows (default: all)
        ("nearest") or L random ones ("random")."""
        linked = self.count if linked is None else linked
        rows = self.entries
        if entry == "nearest":
            spread = (jnp.arange(ENTRY_SAMPLE) * linked) // ENTRY_SAMPLE
            rows = jnp.concatenate([rows, spread.astype(jnp.int32)])
        elif entry == "random":
            key = jax.random.fold_in(jax.random.wrap_key_data(self.rng), seed)
            sampled = jax.random.randint(key, (L,), 0, jnp.maximum(linked, 1),
                                         dtype=jnp.int32)
            rows = jnp.concatenate([rows, jnp.where(linked > 0, sampled, -1)])
        rows = jnp.where(rows < linked, rows, -1)
        return _unique_rows(rows)

    def _beam_search(self, qf, k, *, ef, width, max_iterations, entry, seed, allowed,
                     gather_fraction=None, n_queries=None, linked=None):
        """(keys, rows) (nq, k) of the k best rows found (allowed ones when given).

        Each query starts from the L nearest of the shared start rows. Queries are then
        searched in blocks grouped by their nearest start row, so a block's queries walk
        the same region of the graph and reuse each other's fetched rows in cache
        (Fashion-MNIST, 2 CPU cores: +15% QPS); results do not depend on the grouping.
        n_queries: the leading rows that are real; blocks of padding rows are skipped.
        linked: start rows are drawn from the rows below it (an add's unlinked rows are
        not)."""
        L, W, R = ef, width, self.graph_degree
        share = 1.0 / W if gather_fraction is None else gather_fraction
        gather = W * R if share >= 1 else max(1, int(np.ceil(W * R * share)))
        words = -(-self.capacity // 32)
        start = self._start_rows(L, entry, seed, linked)
        start_x = self._rows_form(start)
        nq = qf.shape[0]

        def initial_beam(q):
            keys = self._keys_to_shared(q, start, start_x)
            keys, cols = smallest_k_padded(keys, L)
            return keys, jnp.where(cols >= 0, start[jnp.maximum(cols, 0)], -1)

        init_keys, init_rows = map_query_blocks(initial_beam, qf, INITIAL_QUERY_BLOCK,
                                                n_queries)
        real = jnp.arange(nq) < (nq if n_queries is None else n_queries)
        order = jnp.argsort(jnp.where(real, init_rows[:, 0], self.capacity), stable=True)
        grouped = (qf[order], init_keys[order], init_rows[order])
        search = functools.partial(self._search_blocks, k=k, L=L, W=W, gather=gather,
                                   words=words, max_iterations=max_iterations,
                                   allowed=allowed, n_queries=n_queries)
        keys, rows = jax.lax.platform_dependent(
            grouped, cpu=functools.partial(search, block=CPU_QUERY_BLOCK),
            default=functools.partial(search, block=self._query_block(W)))
        inverse = jnp.zeros_like(order).at[order].set(jnp.arange(nq, dtype=order.dtype))
        return keys[inverse], rows[inverse]

    def _search_blocks(self, grouped, *, k, L, W, gather, words, max_iterations, allowed,
                       n_queries, block):
        """The beam search of every query block (see `_beam_search`)."""
        R = self.graph_degree
        not_deleted = ~self.deleted

        def bits(rows):
            safe = jnp.maximum(rows, 0)
            return safe >> 5, jnp.where(rows >= 0, jnp.left_shift(
                jnp.uint32(1), (safe & 31).astype(jnp.uint32)), jnp.uint32(0))

        def search_block(args):
            q, keys, rows = args
            nq = q.shape[0]
            qi = jnp.arange(nq)[:, None]
            word, bit = bits(rows)
            visited = jnp.zeros((nq, words), jnp.uint32).at[qi, word].add(bit)
            expanded = jnp.zeros((nq, L), bool)
            if allowed is not None:
                res = _best_allowed(keys, rows, allowed, k)
            else:
                res = (jnp.zeros((nq, 0)), jnp.zeros((nq, 0), jnp.int32))

            def cond(state):
                it, rows, _, expanded, _, _ = state
                return (it < max_iterations) & jnp.any(~expanded & (rows >= 0))

            def body(state):
                it, rows, keys, expanded, visited, res = state
                open_ = ~expanded & (rows >= 0)
                lists, fresh = [], []
                for _ in range(W):  # the W best open candidates, best first
                    pos = jnp.argmax(open_, 1)[:, None]
                    picked = jnp.take_along_axis(open_, pos, 1)
                    open_ = open_.at[qi, pos].set(False)
                    expanded = expanded.at[qi, pos].set(
                        jnp.take_along_axis(expanded, pos, 1) | picked)
                    src = jnp.take_along_axis(rows, pos, 1)[:, 0]
                    nb = jnp.where(picked, self.neighbors[jnp.maximum(src, 0)], -1)
                    word, bit = bits(nb)
                    new = (nb >= 0) & ((jnp.take_along_axis(visited, word, 1) & bit) == 0)
                    for prev, prev_new in zip(lists, fresh):  # shared with an earlier list
                        new &= ~jnp.any((nb[:, :, None] == prev[:, None, :])
                                        & prev_new[:, None, :], 2)
                    lists.append(nb)
                    fresh.append(new)
                nb, new = jnp.concatenate(lists, 1), jnp.concatenate(fresh, 1)
                if gather < W * R:
                    # Distances (the gather of the rows' vectors) are what an iteration
                    # costs: only the first `gather` unvisited neighbours get one. The
                    # rest stay unvisited, so a later expansion can still bring them in.
                    slot = jnp.cumsum(new, 1, dtype=jnp.int32) - 1
                    slot = jnp.where(new & (slot < gather), slot, gather)
                    nb = jnp.full((nq, gather + 1), -1, jnp.int32).at[qi, slot].set(nb)
                    nb = nb[:, :gather]
                else:
                    nb = jnp.where(new, nb, -1)
                word, bit = bits(nb)
                visited = visited.at[qi, word].add(bit)
                cand_keys = self._keys_to(q, nb)
                all_keys = jnp.concatenate([keys, cand_keys], 1)
                all_rows = jnp.concatenate([rows, nb], 1)
                all_exp = jnp.concatenate([expanded, jnp.zeros(nb.shape, bool)], 1)
                neg, pos = jax.lax.top_k(-all_keys, L)
                keys = -neg
                rows = jnp.where(jnp.isinf(keys), -1, jnp.take_along_axis(all_rows, pos, 1))
                expanded = jnp.take_along_axis(all_exp, pos, 1)
                if allowed is not None:
                    res = _merge_results(res, cand_keys, nb, allowed, k)
                return it + 1, rows, keys, expanded, visited, res

            state = (jnp.int32(0), rows, keys, expanded, visited, res)
            _, rows, keys, _, _, res = jax.lax.while_loop(cond, body, state)
            if allowed is not None:
                return res
            ok = (rows >= 0) & not_deleted[jnp.maximum(rows, 0)]
            out_keys, cols = smallest_k_padded(jnp.where(ok, keys, jnp.inf), k)
            out_rows = jnp.where(cols >= 0,
                                 jnp.take_along_axis(rows, jnp.maximum(cols, 0), 1), -1)
            return out_keys, out_rows

        return map_query_blocks(search_block, grouped, block, n_queries)

    # --- remove / reconstruct ---------------------------------------------------------
    def remove_core(self, selector):
        removed = self.live() & ~self.deleted & selector(self.ids)
        return (dataclasses.replace(self, deleted=self.deleted | removed),
                jnp.sum(removed, dtype=jnp.int32))

    def reconstruct_core(self, ids):
        rows, found = _storage.lookup_ids(self.ids, self.live() & ~self.deleted,
                                          ids.astype(self.ids.dtype))
        rows = jnp.clip(rows, 0, max(self.capacity - 1, 0))
        if self.binary:
            return jnp.where(found[:, None], self.payload[rows], 0).astype(jnp.uint8), found
        out = self.codec.decode(self.payload[rows])
        return jnp.where(found[:, None], out, jnp.nan), found

    def range_core(self, xq, radius, capacity, selector=None, **params):
        raise InvalidInputError(
            f"range_search is not supported by graph indexes ({self.describe()}), as in "
            "FAISS's IndexHNSW: search with a large k and filter the distances")


# ------------------------------------------------------------------ module helpers
def _map_blocks(fn, args, block):
    """fn over row blocks of the arrays in args (same first axis), results in order."""
    n = args[0].shape[0]
    if n <= block:
        return fn(args)
    n_blocks = -(-n // block)
    pad = n_blocks * block - n
    padded = [jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1),
                      constant_values=-1 if a.dtype == jnp.int32 else jnp.inf) for a in args]
    stacked = [a.reshape((n_blocks, block) + a.shape[1:]) for a in padded]
    out = jax.lax.map(fn, tuple(stacked))
    return tuple(o.reshape((n_blocks * block,) + o.shape[2:])[:n] for o in out)


def _unique_rows(rows):
    """rows with repeats (and negatives) replaced by -1, order kept."""
    order = jnp.argsort(rows, stable=True)
    s = rows[order]
    dup = jnp.concatenate([jnp.zeros((1,), bool), s[1:] == s[:-1]])
    dup = jnp.zeros_like(dup).at[order].set(dup)
    return jnp.where(dup | (rows < 0), -1, rows).astype(jnp.int32)


def _best_allowed(keys, rows, allowed, k):
    keys = jnp.where((rows >= 0) & allowed(rows), keys, jnp.inf)
    out, cols = smallest_k_padded(keys, k)
    return out, jnp.where(cols >= 0, jnp.take_along_axis(rows, jnp.maximum(cols, 0), 1), -1)


def _merge_results(res, keys, rows, allowed, k):
    best = jnp.concatenate([res[0], keys], 1)
    best_rows = jnp.concatenate([res[1], rows], 1)
    return _best_allowed(best, best_rows, allowed, k)


def _positive_int(v, name):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 1:
        raise InvalidInputError(f"{name} must be a positive int, got {v!r}")
    return int(v)


def _reverse_edges(neighbors, edge_keys, src_rows, src_ok, fwd_rows, fwd_keys):
    """Add v -> u for new edges u -> v: the second half of v's list becomes the nearest
    of (that half, the proposals); the first half is never replaced."""
    cap, R = neighbors.shape
    protect = R // 2
    n_prop = R - protect
    tgt = fwd_rows.reshape(-1)
    src = jnp.repeat(src_rows, R)
    key = fwd_keys.reshape(-1)
    ok = (tgt >= 0) & jnp.repeat(src_ok, R)
    by_key = jnp.argsort(jnp.where(ok, key, jnp.inf))
    by_tgt = by_key[jnp.argsort(jnp.where(ok, tgt, cap)[by_key], stable=True)]
    t, s, kk, o = tgt[by_tgt], src[by_tgt], key[by_tgt], ok[by_tgt]
    t = jnp.where(o, t, cap)
    rank = jnp.arange(t.shape[0]) - jnp.searchsorted(t, t, side="left")
    slot = jnp.where(o & (rank < n_prop), rank, n_prop)
    prop_rows = jnp.full((cap, n_prop), -1, jnp.int32).at[t, slot].set(s, mode="drop")
    prop_keys = jnp.full((cap, n_prop), jnp.inf, jnp.float32).at[t, slot].set(kk, mode="drop")
    dup = jnp.any(prop_rows[:, :, None] == neighbors[:, None, :], -1)
    prop_keys = jnp.where(dup | (prop_rows < 0), jnp.inf, prop_keys)
    tail_rows = jnp.concatenate([neighbors[:, protect:], prop_rows], 1)
    tail_keys = jnp.concatenate([jnp.where(neighbors[:, protect:] >= 0,
                                           edge_keys[:, protect:], jnp.inf), prop_keys], 1)
    # An empty head slot (a node with fewer candidates than R) takes proposals too.
    head_rows, head_keys = neighbors[:, :protect], edge_keys[:, :protect]
    all_rows = jnp.concatenate([head_rows, tail_rows], 1)
    all_keys = jnp.concatenate([jnp.where(head_rows >= 0, -jnp.inf, jnp.inf), tail_keys], 1)
    neg, pos = jax.lax.top_k(-all_keys, R)
    chosen_rows = jnp.take_along_axis(all_rows, pos, 1)
    chosen_keys = jnp.take_along_axis(jnp.concatenate([head_keys, tail_keys], 1), pos, 1)
    empty = jnp.isinf(neg) & (neg < 0)  # +inf keys: nothing there
    return (jnp.where(empty, -1, chosen_rows).astype(jnp.int32),
            jnp.where(empty, jnp.inf, chosen_keys))


def reachable(neighbors, entries, count):
    """(capacity,) bool: rows < count reachable from `entries` along the edges."""
    cap = neighbors.shape[0]
    start = jnp.zeros((cap + 1,), bool).at[jnp.where(entries >= 0, entries, cap)].set(True)
    start = start[:cap]

    def cond(state):
        return jnp.any(state[1])

    def body(state):
        reached, frontier = state
        nb = jnp.where(frontier[:, None] & (neighbors >= 0), neighbors, cap)
        hit = jnp.zeros((cap + 1,), bool).at[nb.reshape(-1)].set(True)[:cap]
        newly = hit & ~reached
        return reached | newly, newly

    reached, _ = jax.lax.while_loop(cond, body, (start, start))
    return reached & _storage.live_mask(cap, count)


def _repair(neighbors, edge_keys, entries, count):
    """Give every row an in-edge path from the entries (see module docstring, step 4)."""
    cap, R = neighbors.shape
    if cap == 0:
        return neighbors, edge_keys
    tail = max(1, R - R // 2)
    rows = jnp.arange(cap, dtype=jnp.int32)
    exists = _storage.live_mask(cap, count)

    def cond(state):
        round_, _, _, missing = state
        return (round_ < REPAIR_ROUNDS) & missing

    def body(state):
        round_, neighbors, edge_keys, _ = state
        reached = reachable(neighbors, entries, count)
        lost = exists & ~reached
        out = neighbors
        via = (out >= 0) & reached[jnp.maximum(out, 0)]
        has = jnp.any(via, 1)
        first = out[rows, jnp.argmax(via, 1)]
        pool = jnp.nonzero(reached, size=cap, fill_value=0)[0]
        any_reached = pool[rows % jnp.maximum(jnp.sum(reached), 1)]
        parent = jnp.where(has, first, any_reached)
        parent = jnp.where(lost & jnp.any(reached), parent, cap)
        slot = R - 1 - (round_ % tail)
        neighbors = neighbors.at[parent, slot].set(rows, mode="drop")
        edge_keys = edge_keys.at[parent, slot].set(jnp.float32(jnp.inf), mode="drop")
        return round_ + 1, neighbors, edge_keys, jnp.any(lost)

    _, neighbors, edge_keys, _ = jax.lax.while_loop(
        cond, body, (jnp.int32(0), neighbors, edge_keys, jnp.bool_(True)))
    return neighbors, edge_keys


# ------------------------------------------------------------------ compaction
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
        if hasattr(index, "index"):
            index = index.index
        elif hasattr(index, "base"):
            index = index.base
        else:
            raise InvalidInputError(f"{type(index).__name__} holds no graph index")
    return index


def _with_graph(index, graph):
    if isinstance(index, GraphIndex):
        return graph
    if hasattr(index, "index"):
        return dataclasses.replace(index, index=_with_graph(index.index, graph))
    return dataclasses.replace(index, base=_with_graph(index.base, graph))


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
