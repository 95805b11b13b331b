"""The gathered scan of an IVF index: small batches (few queries per probed list).

Small batches (few queries per probed list, `gathers`) take `scan_gathered` instead of
the list-major scan (`jann.ivf.list_major`): query-major, each query's probed lists cut into tiles of 16 contiguous rows gathered back
to back, so a query reads its lists and nothing else (no per-list row chunk to pad, no
list-major bookkeeping); 1.3-2.2x faster than the list-major scan at 1-16 queries.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jann.ivf.list_major import scan_shape, uses_tables
from jann.ops import distances as dist_ops
from jann.ops.codes import unpack_codes
from jann.ops.sorting import prefix_sum
from jann.ops.topk import merge_smallest, smallest_k_padded

# Each query's probed lists are cut into tiles of GATHER_TILE_ROWS rows, scored in blocks
# of 2**n tiles (MIN_GATHER_BLOCK..MAX_GATHER_BLOCK rows), a chunk at a time (a mean
# query's tiles in GATHER_CHUNKS chunks of at least MIN_GATHER_CHUNK rows, each at most
# GATHER_CHUNK_BYTES of decoded rows per query), GATHER_QUERY_GROUP queries at a time
# (2 beat 1 and 4 on sift-textures at 16 queries; tiles of 8, 16 and 32 rows were alike).
MIN_GATHER_BLOCK, MAX_GATHER_BLOCK = 256, 16384
MIN_GATHER_CHUNK = 256
GATHER_CHUNK_BYTES = 1 << 20
GATHER_TILE_ROWS = 16
GATHER_CHUNKS = 2
GATHER_QUERY_GROUP = 2
# When the gathered scan is taken (`gathers`): queries per probed list at most
# GATHER_MAX_SHARING (rows up to GATHER_WIDE_D wide; GATHER_MAX_SHARING_WIDE for wider),
# and up to GATHER_MAX_SINGLE_LIST_QUERIES queries on an index of one list.
GATHER_MAX_SHARING, GATHER_MAX_SHARING_WIDE, GATHER_WIDE_D = 2.0, 0.25, 512
GATHER_MAX_SINGLE_LIST_QUERIES = 256


def gathers(index, nq: int, npb: int) -> bool:
    """Whether `scan_gathered` serves nq queries probing npb lists each: when few
    queries probe each list on average (the list-major scan reads a list once for
    all of them); for codes scored by look-up tables (product codes of small
    batches, `uses_tables`) only single queries.

    Measured (2 threads, scan alone, gathered vs list-major; nq x nprobe / nlist =
    sharing): sift-textures IVF2048,Flat (128-d), nprobe 45: 1.3x faster at one
    query, 1.5x at 16 (sharing 0.5), 1.6x at 64 (2), 0.97x at 128 (4);
    debian-minilm IVF1024,Flat (384-d), nprobe 91: 2.2x at one query, 1.7x at 16
    (2), 1.0x at 32 (4); Fashion-MNIST IVF1024,Flat (784-d), nprobe 8: 1.4x at one
    query, 1.2x at 16 (0.12), but 0.8x at 64 (0.5) and 0.7x at 128 (1): wide rows
    take the gathered scan only for the smallest batches. Product codes by tables
    (one table per probe for l2 by residual): sift-textures IVF2048,PQ16, nprobe 11,
    and debian-minilm IVF1024,PQ48, nprobe 6: 1.6x and 1.45x at one query; at 16-64
    queries 0.8-1.26x, no gain to count on.

    One list (the flat-coded "SQ8", "PQ16", ...): the list-major scan runs the list's
    row chunks one after another for every query group, so the gathered scan is
    taken up to GATHER_MAX_SINGLE_LIST_QUERIES queries. sift-textures 200k, scan ms
    list-major / gathered (faiss-cpu's whole search): SQ8 at 1, 16, 256, 1024
    queries 38 / 4.1 (2.6), 478 / 51 (21), 3754 / 762 (326), 3673 / 3118 (1306);
    PQ16 87 / 4.5 (1.5), 629 / 73 (12), 4040 / 1236 (191), 3958 / 5172 (766)."""
    if index.nlist == 1:
        return nq <= GATHER_MAX_SINGLE_LIST_QUERIES
    if uses_tables(index, scan_shape(index, nq, npb, 1)["query_group"]):
        return nq == 1
    sharing = nq * npb / index.nlist
    limit = GATHER_MAX_SHARING if index.d <= GATHER_WIDE_D else GATHER_MAX_SHARING_WIDE
    return sharing <= limit


def gathered_shape(index, npb: int) -> dict:
    """Static shape of `scan_gathered`: tiles of `tile` rows; each query's tiles are
    scored in blocks of `block` tiles (the power of two at or above 1.5x the mean
    number a query probes, so that most queries need one block), `chunk` tiles at a
    time (half a mean query's, at least MIN_GATHER_CHUNK rows, at most
    GATHER_CHUNK_BYTES of decoded rows per query)."""
    tile = int(GATHER_TILE_ROWS)
    mean_tiles = npb * (index.capacity / index.nlist / tile + 0.5)
    block = 1 << int(np.ceil(np.log2(max(1.5 * mean_tiles, 1.0))))
    block = int(np.clip(block, MIN_GATHER_BLOCK // tile, MAX_GATHER_BLOCK // tile))
    chunk = min(GATHER_CHUNK_BYTES // (4 * index.d * tile),
                max(mean_tiles / GATHER_CHUNKS, MIN_GATHER_CHUNK // tile))
    chunk = 1 << max(0, int(max(chunk, 1)).bit_length() - 1)
    return dict(tile=tile, block=block, chunk=int(min(block, chunk)))


def scan_gathered(index, q, lists, k: int, selector=None):
    """The list-major `scan` for few queries per list: query-major, each query's probed lists cut
    into tiles of contiguous rows, gathered back to back (a query reads its lists
    and nothing else; no list-major bookkeeping, and only the last tile of a list
    is padded). Product codes are scored by look-up tables, others decoded.

    Tile positions 0.. run over the query's probed lists in probe order; they are
    scored a chunk at a time into a block of scores, whose k best are merged into
    the running result (one block unless the query probes more than `block` tiles).
    Queries go GATHER_QUERY_GROUP at a time."""
    nq, npb = lists.shape
    similarity = dist_ops.is_similarity(index.metric)
    if not index.capacity:
        return (jnp.full((nq, k), -jnp.inf if similarity else jnp.inf, jnp.float32),
                jnp.full((nq, k), -1, index.ids.dtype))
    shape = gathered_shape(index, npb)
    tile, block, chunk = shape["tile"], shape["block"], shape["chunk"]
    tile = min(tile, index.capacity)
    group = GATHER_QUERY_GROUP if nq % GATHER_QUERY_GROUP == 0 else 1
    list_starts = jnp.concatenate([index.offsets, index.offsets[-1:]])
    list_sizes = jnp.concatenate([jnp.diff(index.offsets), jnp.zeros((1,), jnp.int32)])
    centroids = index.centroids
    groups = jnp.arange(group)[:, None]

    first_row, sizes = list_starts[lists], list_sizes[lists]     # (nq, npb)
    n_tiles = (sizes + tile - 1) // tile
    ends = prefix_sum(n_tiles, axis=1)                            # in tiles
    first_tile = ends - n_tiles
    total = ends[:, -1]
    if index.by_residual:
        probe_c = centroids[jnp.minimum(lists, index.nlist - 1)]
        probe_q = q[:, None, :] - probe_c
        probe_bias = dist_ops.squared_norms(probe_q) if index.metric == "l2" else \
            jnp.einsum("qd,qpd->qp", q, probe_c)
    else:
        probe_q = probe_bias = jnp.zeros((nq, 0), jnp.float32)

    def tiles_at(layout, probe, t):
        """First storage row of tile t (a tile of list `probe`), moved back to end at
        the capacity, and which of its rows belong to the list."""
        first_row, sizes, first_tile = layout
        start = jnp.take_along_axis(first_row, probe, 1) + tile * (
            t - jnp.take_along_axis(first_tile, probe, 1))
        stop = jnp.take_along_axis(first_row + sizes, probe, 1)
        moved = jnp.clip(start, 0, index.capacity - tile)
        rows = moved[..., None] + jnp.arange(tile, dtype=jnp.int32)
        return moved, rows, (rows >= start[..., None]) & (rows < stop[..., None])

    decode = index.codec.kernel_decode()
    by_tables = decode is not None and decode.kind == "pq"

    def group_tables(qv, probe_q):
        """Product codes are scored by look-up (FAISS's ADC): inner-product tables
        (G, [npb,] M, ksub) of each probe's residual query for l2 by residual (one
        table per probe), of the query otherwise."""
        if index.by_residual and index.metric == "l2":
            t = decode.ip_tables(probe_q.reshape(-1, index.d))
            return t.reshape((group, npb) + t.shape[1:])
        return decode.ip_tables(qv)

    def looked_up_dots(tables, codes, probe):
        """(G, C, tile) inner products of the rows' codes (G * C, tile, code_size) with
        the tables of their query (and probe)."""
        m_sub = tables.shape[-2]
        sub = unpack_codes(codes.reshape(-1, codes.shape[-1]), m_sub, decode.nbits)
        sub = sub.reshape(group, chunk, tile, m_sub)
        g = groups[:, :, None, None]
        m = jnp.arange(m_sub)[None, None, None, :]
        if tables.ndim == 4:
            picked = tables[g, probe[:, :, None, None], m, sub]
        else:
            picked = tables[g, m, sub]
        return jnp.sum(picked, axis=-1)

    def one_group(args):
        """Scores of the first block of tiles of a group of queries, and the k best
        of the tiles past it (queries that probe more than `block` tiles)."""
        qv, first_row, sizes, ends, first_tile, total, probe_q, probe_bias = args
        layout = (first_row, sizes, first_tile)
        tables = group_tables(qv, probe_q) if by_tables else None

        def chunk_probes(first):
            """Probe of tiles first.. first + chunk - 1: it steps up at each list's
            end, counted by a prefix sum over the chunk (searching every tile
            among the ends cost 3x as much)."""
            at = jnp.clip(ends - first, 0, chunk)
            steps = jnp.zeros((group, chunk + 1), jnp.int32).at[groups, at].add(
                (ends > first).astype(jnp.int32))
            probe = jnp.sum(ends <= first, -1, dtype=jnp.int32)[:, None] + \
                prefix_sum(steps[:, :chunk], axis=1)
            return jnp.minimum(probe, npb - 1)

        def score_chunk(base, c, scores):
            first = base + c * chunk
            probe = chunk_probes(first)
            t = first + jnp.arange(chunk, dtype=jnp.int32)[None, :]
            moved, rows, ok = tiles_at(layout, probe, t)
            ok &= (t < total[:, None])[..., None]
            # contiguous tiles: slices copy 2x faster than a gather of single rows
            codes = jax.vmap(lambda r: jax.lax.dynamic_slice_in_dim(
                index.payload, r, tile))(moved.reshape(-1))
            norms = jax.vmap(lambda r: jax.lax.dynamic_slice_in_dim(
                index.norms, r, tile))(moved.reshape(-1)).reshape(group, chunk, tile)
            if by_tables:
                dots = looked_up_dots(tables, codes, probe)
            else:
                y = index.codec.decode(codes.reshape((-1,) + codes.shape[2:])).reshape(
                    group, chunk, tile, index.d)
            if index.by_residual and index.metric == "l2":
                if not by_tables:
                    pq = jnp.take_along_axis(probe_q, probe[..., None], 1)
                    dots = jnp.einsum("gctd,gcd->gct", y, pq)
                s = jnp.take_along_axis(probe_bias, probe, 1)[..., None] + norms \
                    - 2.0 * dots
                s = jnp.maximum(s, 0.0)
            elif index.metric == "l2":
                if not by_tables:
                    dots = jnp.einsum("gctd,gd->gct", y, qv)
                s = jnp.maximum(dist_ops.squared_norms(qv)[:, None, None] + norms
                                - 2.0 * dots, 0.0)
            else:
                s = -(dots if by_tables else jnp.einsum("gctd,gd->gct", y, qv))
                if index.by_residual:
                    s = s - jnp.take_along_axis(probe_bias, probe, 1)[..., None]
            if selector is not None:
                ok &= selector(index.ids[rows])
            return jax.lax.dynamic_update_slice_in_dim(
                scores, jnp.where(ok, s, jnp.inf).reshape(group, chunk * tile),
                c * chunk * tile, 1)

        def block_scores(base):
            n_chunks = jnp.clip((jnp.max(total) - base + chunk - 1) // chunk, 0,
                                block // chunk)
            return jax.lax.fori_loop(0, n_chunks, functools.partial(score_chunk, base),
                                     jnp.full((group, block * tile), jnp.inf,
                                              jnp.float32))

        def next_block(state):
            base, best, best_pos = state
            values, cols = smallest_k_padded(block_scores(base), k)
            best, best_pos = merge_smallest(
                best, best_pos, values, jnp.where(cols < 0, -1, base * tile + cols), k)
            return base + block, best, best_pos

        init = (jnp.asarray(block, jnp.int32), jnp.full((group, k), jnp.inf, jnp.float32),
                jnp.full((group, k), -1, jnp.int32))
        _, best, best_pos = jax.lax.while_loop(
            lambda state: state[0] < jnp.max(total), next_block, init)
        return block_scores(0), best, best_pos

    def grouped(x):
        return x.reshape((nq // group, group) + x.shape[1:])

    scores, later, later_pos = jax.lax.map(one_group, tuple(map(grouped, (
        q, first_row, sizes, ends, first_tile, total, probe_q, probe_bias))))
    # one selection over every query's first block (per group it cost as much as
    # the scoring on Fashion-MNIST's short lists), merged with the later blocks' best
    best, best_pos = smallest_k_padded(scores.reshape(nq, block * tile), k)
    best, best_pos = jax.lax.cond(
        jnp.any(total > block),
        lambda: merge_smallest(best, best_pos, later.reshape(nq, k),
                               later_pos.reshape(nq, k), k),
        lambda: (best, best_pos))
    t = jnp.maximum(best_pos, 0) // tile
    probe = jnp.minimum(jnp.sum(t[:, :, None] >= ends[:, None, :], -1, dtype=jnp.int32),
                        npb - 1)
    moved, _, _ = tiles_at((first_row, sizes, first_tile), probe, t)
    ids = jnp.where(best_pos < 0, -1, index.ids[moved + jnp.maximum(best_pos, 0) % tile])
    return (-best if similarity else best), ids
