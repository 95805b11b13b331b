"""Pure functions on a graph's neighbour arrays ((capacity, graph_degree) int32 rows,
-1 = empty slot, with their float32 edge keys): reverse edges, reachability from the
entry points, connectivity repair, de-duplicated row lists, and block-wise mapping."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jann import _storage
from jann.graph.settings import REPAIR_ROUNDS

__all__ = ["local_reverse_edges", "map_blocks", "reachable", "repair", "repair_when_due",
           "reverse_edges", "unique_rows"]


def map_blocks(fn, args, block):
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


def unique_rows(rows):
    """rows with repeats (and negatives) replaced by -1, order kept."""
    order = jnp.argsort(rows, stable=True)
    s = rows[order]
    dup = jnp.concatenate([jnp.zeros((1,), bool), s[1:] == s[:-1]])
    dup = jnp.zeros_like(dup).at[order].set(dup)
    return jnp.where(dup | (rows < 0), -1, rows).astype(jnp.int32)


def reverse_edges(neighbors, edge_keys, src_rows, src_ok, fwd_rows, fwd_keys):
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


def local_reverse_edges(neighbors, edge_keys, src_rows, src_ok, fwd_rows, fwd_keys):
    """`reverse_edges` for a few new rows: only the rows their edges point to are read
    and rewritten (O(n R^2), not O(capacity R^2): a 1-row add to a 16k-row graph spent
    most of its 80 ms there and in `repair`). A new row none of whose proposals was
    taken gets an in-edge in the last slot of its first neighbour.

    An old row whose last in-edge was replaced by a proposal is not noticed here:
    counting every row's in-edges reads the whole graph (7-17 ms at 65k rows of degree
    64, more than the rest of the add), and a 1-row add drops up to R such edges. The
    caller repairs the whole graph periodically instead (`repair_when_due`)."""
    cap, R = neighbors.shape
    ok = (fwd_rows >= 0) & src_ok[:, None]
    targets = jnp.unique(jnp.where(ok, fwd_rows, cap).reshape(-1), size=ok.size,
                         fill_value=cap)
    local = jnp.where(ok, jnp.searchsorted(targets, fwd_rows), -1).astype(jnp.int32)
    rows = jnp.minimum(targets, cap - 1)
    sub_rows, sub_keys = reverse_edges(neighbors[rows], edge_keys[rows], src_rows, src_ok,
                                       local, fwd_keys)
    write = jnp.where(targets < cap, targets, cap)
    neighbors = neighbors.at[write].set(sub_rows, mode="drop")
    edge_keys = edge_keys.at[write].set(sub_keys, mode="drop")
    pointed = jnp.any(sub_rows[None, :, :] == src_rows[:, None, None], axis=(1, 2)) | \
        jnp.any(jnp.where(ok, fwd_rows, -1)[None, :, :] == src_rows[:, None, None],
                axis=(1, 2))
    orphan = src_ok & ~pointed & (fwd_rows[:, 0] >= 0)
    parent = jnp.where(orphan, fwd_rows[:, 0], cap)
    return (neighbors.at[parent, R - 1].set(src_rows, mode="drop"),
            edge_keys.at[parent, R - 1].set(fwd_keys[:, 0], mode="drop"))


def repair_when_due(neighbors, edge_keys, entries, count, due):
    """`repair` when `due` (traced), else the arrays unchanged: streamed small adds
    restore the whole graph's reachability once per REPAIR_PERIOD rows."""
    return jax.lax.cond(due, lambda arrays: repair(*arrays, entries, count),
                        lambda arrays: arrays, (neighbors, edge_keys))


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


def repair(neighbors, edge_keys, entries, count):
    """Give every row an in-edge path from the entries (see the jann.graph docstring, step 4)."""
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
