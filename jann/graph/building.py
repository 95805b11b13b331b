"""Building the graph: `add_core` and what it needs (see the `jann.graph` docstring,
Build): candidate lists (exact, PCA-filtered, or searched), HNSW pruning, reverse edges
and repair, and a new graph's entry points. A mixin of `GraphIndex`."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jann import _storage
from jann.graph.edges import (
    local_reverse_edges, map_blocks, repair, repair_when_due, reverse_edges, unique_rows)
from jann.graph.settings import (
    DEFAULT_WIDTH, ENTRY_POINTS, EXACT_BUILD_MAX, INSERT_BATCH, LOCAL_LINK_SHARE, PROJECTION_DIMS,
    PROJECTION_MIN_D, PROJECTION_MIN_ENERGY, PROJECTION_MIN_QUERIES, PROJECTION_POOL,
    PRUNE_BYTES, REPAIR_PERIOD, RERANK_QUERY_BLOCK, STREAM_EXACT_MAX, pow2_floor)
from jann.ops import distances as dist_ops
from jann.ops import hamming
from jann.ops.knn import knn_scan, map_query_blocks
from jann.ops.projection import pca_basis, projected_pool
from jann.ops.topk import smallest_k_padded

__all__ = ["GraphBuilding"]


class GraphBuilding:
    """`GraphIndex.add_core` and its helpers (no fields: a mixin)."""

    # --- add ------------------------------------------------------------------------
    def add_core(self, x, n_valid, ids, valid_rows):
        q = self.prepare(x)
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
        n_added = _storage.advanced(self.n_added, n_valid, status)
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
        if self._links_locally(q.shape[0]):
            neighbors, edge_keys = local_reverse_edges(neighbors, edge_keys, rows_new, new_ok,
                                                       fwd_rows, fwd_keys)
            due = rows_new[0] // REPAIR_PERIOD != linked // REPAIR_PERIOD
            return repair_when_due(neighbors, edge_keys, self.entries, linked, due)
        neighbors, edge_keys = reverse_edges(neighbors, edge_keys, rows_new, new_ok,
                                             fwd_rows, fwd_keys)
        return repair(neighbors, edge_keys, self.entries, linked)

    def _links_locally(self, n: int) -> bool:
        """Whether an add of n rows (streaming) links them locally (LOCAL_LINK_SHARE)."""
        return n * self.graph_degree <= LOCAL_LINK_SHARE * self.capacity

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

        # a streaming add searches the graph from a smaller size on: exact candidates
        # read every stored vector per add
        exact_max = STREAM_EXACT_MAX if self._links_locally(q.shape[0]) else EXACT_BUILD_MAX
        if self.capacity <= exact_max:
            keys, rows = exact()
        else:
            keys, rows = jax.lax.cond(rows_new[0] < exact_max, exact, searched)
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
        block = int(min(n, max(1, pow2_floor(PRUNE_BYTES // per_row))))

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

        out_rows, out_keys = map_blocks(prune_block, (cand_rows, cand_keys), block)
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
        return unique_rows(rows)

    # --- exact candidates -----------------------------------------------------------
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
