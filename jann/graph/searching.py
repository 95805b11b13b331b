"""Searching the graph: the batched beam search (see the `jann.graph` docstring,
Search), its parameters, and `range_core` (not supported). A mixin of `GraphIndex`."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jann.errors import InvalidInputError
from jann.graph.edges import unique_rows
from jann.graph.settings import (
    CPU_QUERY_BLOCK, DEFAULT_EF, DEFAULT_WIDTH, EF_VALUES, ENTRIES, ENTRY_SAMPLE,
    INITIAL_QUERY_BLOCK, MAX_QUERY_BLOCK, SEARCH_BLOCK_BYTES, pow2_floor)
from jann.ops.knn import map_query_blocks
from jann.ops.sorting import prefix_sum
from jann.ops.topk import smallest_k_padded

__all__ = ["GraphSearching"]


class GraphSearching:
    """`GraphIndex.search_core`, its parameters and the beam search (no fields: a mixin)."""

    # --- search ---------------------------------------------------------------------
    def search_parameter_space(self) -> dict[str, tuple]:
        """What `jann.autotune` tries: the beam width (results come from the beam)."""
        return {"ef": EF_VALUES}

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
        qf = self._query_form(self.prepare(xq))
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
        return int(max(8, min(MAX_QUERY_BLOCK, pow2_floor(SEARCH_BLOCK_BYTES // per_query))))

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
        return unique_rows(rows)

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
                    slot = prefix_sum(new, 1, dtype=jnp.int32) - 1
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

    def range_core(self, xq, radius, capacity, selector=None, **params):
        raise InvalidInputError(
            f"range_search is not supported by graph indexes ({self.describe()}), as in "
            "FAISS's IndexHNSW: search with a large k and filter the distances")


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
