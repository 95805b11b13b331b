"""Inverted-file indexes: IVF-Flat, IVF-PQ, IVF-SQ, IVF-RQ, and the flat-coded indexes.

A coarse quantizer (a Flat index of `nlist` centroids, trained by k-means; or a graph
index over them, "IVF65536_HNSW32,...", for large nlist) assigns each vector to a list;
the list stores the vector's code (`codec.encode` of the vector, or of its residual from
the centroid when `by_residual`). Search probes the `nprobe` nearest
lists of each query. An index with one list and no residual is a plain coded index
("PQ16", "SQ8", "RQ8x8"): the same storage and scan with a trivial quantizer.

Storage layout: CSR. All rows (codes, ids, and the squared norm of each decoded row)
live in static-capacity buffers sorted by list, with `offsets` (nlist + 1) delimiting
the lists. Memory is exact (no per-list padding; the only slack is the capacity, which
`jann.shrink_to_fit` trims). Measured by benchmarks/ivf.py on Fashion-MNIST (60k x 784,
IVF1024,PQ56, after shrink_to_fit): the lists hold 3.85 MB, 1.004x the 3.84 MB of
codes + int64 ids that FAISS's lists hold (per vector 56 B code + 4 B int32 id + 4 B norm;
with jax_enable_x64, int64 ids make it 1.06x). An add merges the
new rows into sorted order (a stable sort of list ids and one gather: O(n) per add, no
recompile within a capacity); a removal compacts in place order-preserving. Pages with a
page table would make adds O(batch) at the price of per-list slack; CSR was chosen for
exact memory and because search reads each list as one contiguous run.

Search order: list-major. The (query, probed list) pairs are grouped by list
(`bucket_sort`, lists ranked by length); each work item takes up to `Qc` queries probing
one list, decodes the list's first `Lc` rows and computes the (Qc, Lc) score block with
one matmul (float32 accumulation). A list is thus read once per query batch instead of
once per query, and the scan is BLAS-sized work. With one query per group (Qc = 1) this
is the query-major order. The loop runs a data-dependent number
of steps (`lax.while_loop`) of `ITEMS_PER_STEP` items each, so the work follows the
lists actually probed, not a padded maximum, inside jit too.

Small batches (few queries per probed list, `_gathers`) take `scan_gathered` instead:
query-major, each query's probed lists cut into tiles of 16 contiguous rows gathered back
to back, so a query reads its lists and nothing else (no per-list row chunk to pad, no
list-major bookkeeping); 1.3-2.2x faster than the list-major scan at 1-16 queries.

Selection: a pair's first-chunk scores are kept whole (no per-pair top-k: XLA's CPU
top_k costs ~0.8 us per row whatever its length, more than the matmul of a short row);
rows past Lc (long lists) are folded into k running best slots. The candidates are
written in list order as the items produce them (one contiguous block per step), and
each query's top-k is selected once, in place, over its nprobe x (Lc + k) candidates
(`smallest_k_gathered`: block minima, then the best k blocks).

Shape rule (measured on sift-textures IVF2048,Flat and debian-minilm IVF1024,{Flat,
PQ48}, 2 threads): Qc ~ the mean number of queries per probed list (pairs / nlist, a
power of two, at most 256), Lc ~ the mean list length (a power of two, 32-512): larger
Lc (256 for 98-row lists) wasted more matmul than the fewer folds saved; Qc at half
the mean was no faster. Batches pass through in blocks of at most `SCAN_QUERY_BLOCK`
queries so that a padded batch's empty blocks are skipped.

PQ codes: a work item with many queries decodes its Lc codes once and scores them for
all Qc queries with one matmul against the residuals (one decode serves Qc queries, no
table to build); with at most `MAX_TABLE_QUERY_GROUP` queries (small batches) it scores
them by look-up in per-query tables instead (FAISS's ADC; for L2 by residual
||q - c - y||^2 = ||q - c||^2 + ||y||^2 + 2 c.y - 2 q.y, the c.y term from the list's
centroid table). Measured figures are in `_uses_tables`; `jann.ops.adc` is the ADC scan
with the tables on chip for GPUs.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jann import _storage
from jann._pytree import pytree_dataclass, static
from jann.errors import InvalidInputError
from jann.flat import FlatIndex
from jann.graph import GraphIndex, build, emptied
from jann.index import Index
from jann.kmeans import kmeans
from jann.ops import distances as dist_ops
from jann.ops.codes import unpack_codes
from jann.ops.ivf_scan import ivf_search
from jann.ops.knn import map_query_blocks
from jann.ops.sorting import bucket_sort, prefix_sum, stable_argsort
from jann.ops.topk import merge_smallest, smallest_k_gathered, smallest_k_padded
from jann.quantizers.layout import encoded_row

__all__ = ["IVFIndex"]

# Work-item shape of the list-major scan: queries per group ~ the mean number of queries
# probing a list, rows per chunk ~ the mean list length (times these factors), clipped.
MAX_QUERY_GROUP = 256
MIN_ROW_CHUNK, MAX_ROW_CHUNK = 32, 512
QUERY_GROUP_FACTOR = 1.0
ROW_CHUNK_FACTOR = 1.0


# Work items one scan step runs together (vmapped): a step of one item spent most of its
# time in per-op overhead (IVF1024,PQ56 on Fashion-MNIST, 4096 queries, nprobe 8: 0.74 s
# with one item per step, 0.40 s with 4 or 16; 64 was slower again; sift-textures
# IVF2048,Flat, 2000 queries, nprobe 45: 16 beat 8 and 32).
ITEMS_PER_STEP = 16
# Lists are ordered by their number of row chunks, up to this many, for the scan's steps.
MAX_ORDERED_CHUNKS = 1 << 16
# The scan keeps every (query, probed list) pair's candidates, (nq x nprobe x width) x 4
# bytes: a search whose candidates would pass this bound scans its queries in blocks that
# fit (each block reads its probed lists again, so blocks are as large as the bound allows).
MAX_SCAN_BYTES = 512 << 20
# Product-quantizer codes are scored by look-up tables when a work item has at most this
# many queries, decoded and multiplied otherwise (`IVFIndex._uses_tables`).
MAX_TABLE_QUERY_GROUP = 4
# ... and in blocks of at most this many queries, so that the blocks of a padded batch past
# its real queries are skipped, and the candidate buffers of 10k queries (each page of
# them faulted in afresh per call) are not made for 16384.
SCAN_QUERY_BLOCK = 2048
# Few queries per list (`_gathers`): each query's probed lists are cut into tiles of
# GATHER_TILE_ROWS rows, scored in blocks of 2**n tiles (MIN_GATHER_BLOCK..MAX_GATHER_BLOCK
# rows), a chunk at a time (a mean query's tiles in GATHER_CHUNKS chunks of at least
# MIN_GATHER_CHUNK rows, each at most GATHER_CHUNK_BYTES of decoded rows per query),
# GATHER_QUERY_GROUP queries at a time (2 beat 1 and 4 on sift-textures at 16 queries;
# tiles of 8, 16 and 32 rows were alike).
MIN_GATHER_BLOCK, MAX_GATHER_BLOCK = 256, 16384
MIN_GATHER_CHUNK = 256
GATHER_CHUNK_BYTES = 1 << 20
GATHER_TILE_ROWS = 16
GATHER_CHUNKS = 2
GATHER_QUERY_GROUP = 2
GATHER_MAX_SINGLE_LIST_QUERIES = 256
GATHER_MAX_SHARING, GATHER_MAX_SHARING_WIDE, GATHER_WIDE_D = 2.0, 0.25, 512
# Queries of a padded batch are assigned to lists in blocks of this many rows, so that
# the blocks past the real rows are skipped (10000 queries padded to 16384).
PROBE_QUERY_BLOCK = 2048


def _is_graph(quantizer) -> bool:
    return isinstance(quantizer, GraphIndex)


def _scan_query_block(per_query_bytes: int) -> int:
    return 1 << max(4, (MAX_SCAN_BYTES // per_query_bytes).bit_length() - 1)


def _pow2_near(x: float) -> int:
    return 1 << max(0, int(round(np.log2(max(x, 1.0)))))


def nprobe_values(nlist: int) -> tuple[int, ...]:
    """Powers of two up to nlist, and nlist itself (probing every list is exact search).

    Powers of two also match jann's compile buckets: each value is its own program."""
    if isinstance(nlist, bool) or not isinstance(nlist, (int, np.integer)) or nlist < 1:
        raise InvalidInputError(f"nlist must be a positive int, got {nlist!r}")
    values = [1 << i for i in range(int(nlist).bit_length()) if 1 << i <= nlist]
    return tuple(values if values[-1] == nlist else values + [int(nlist)])


@pytree_dataclass
class IVFIndex(_storage.ListedRows, Index):
    """Inverted-file index. Array fields are leaves; configuration is static.

    quantizer: FlatIndex of the nlist centroids (empty until trained), or a GraphIndex
               over them ("IVF<nlist>_HNSW<M>": assignment by beam search, search
               parameter `quantizer_ef`, FAISS's quantizer_efSearch).
    codec:     how rows are stored (IdentityCodec, ScalarQuantizer, ProductQuantizer, ...).
    payload:   (capacity, *code_shape) stored codes, sorted by list.
    norms:     (capacity,) float32 squared norm of each decoded row.
    ids:       (capacity,) ids.  offsets: (nlist + 1,) int32 list boundaries.
    count:     () int32 live rows (= offsets[-1]).  status: () int32 refused-write bits.
    """

    # jann.search may pad a query batch to a bucket and pass the real row count
    # (`n_queries`): padded rows probe no list, so they cost no scan work.
    skips_padded_queries = True
    inverted_lists = True

    quantizer: FlatIndex | GraphIndex
    codec: object
    payload: jax.Array
    norms: jax.Array
    ids: jax.Array
    offsets: jax.Array
    count: jax.Array
    status: jax.Array
    metric: str = static("l2")
    id_mode: str = static("sequential")
    by_residual: bool = static(True)
    exhaustive: bool = static(False)
    is_trained: bool = static(False)
    description: str = static("IVF")

    # --- construction ---------------------------------------------------------------
    @classmethod
    def create(cls, d: int, nlist: int, codec, *, metric: str = "l2",
               id_mode: str = "sequential", by_residual: bool = True,
               exhaustive: bool = False, description: str = "IVF",
               graph_quantizer: GraphIndex | None = None) -> "IVFIndex":
        """graph_quantizer: an empty graph index (metric "l2", or "ip" for ip / cosine
        indexes) to build over the centroids instead of a Flat quantizer."""
        quantizer_metric = "ip" if metric in ("ip", "cosine") else "l2"
        code = encoded_row(codec, d)
        if graph_quantizer is not None and graph_quantizer.metric != quantizer_metric:
            raise InvalidInputError(f"the graph quantizer of a {metric} IVF index must use "
                                    f"the {quantizer_metric} metric")
        return cls(
            quantizer=graph_quantizer or FlatIndex.create(d, quantizer_metric),
            codec=codec,
            payload=jnp.zeros((0,) + code.shape[1:], code.dtype),
            norms=jnp.zeros((0,), jnp.float32),
            ids=_storage.empty_ids(0),
            offsets=jnp.zeros((nlist + 1,), jnp.int32),
            count=jnp.zeros((), jnp.int32),
            status=jnp.zeros((), jnp.int32),
            metric=metric, id_mode=id_mode, by_residual=by_residual,
            exhaustive=exhaustive, is_trained=False, description=description)

    @property
    def d(self) -> int:
        return self.quantizer.d

    def grown(self, capacity: int) -> "IVFIndex":
        return dataclasses.replace(
            self, payload=_storage.pad_rows(self.payload, capacity),
            norms=_storage.pad_rows(self.norms, capacity),
            ids=_storage.pad_rows(self.ids, capacity, -1))

    @property
    def centroids(self) -> jax.Array:
        q = self.quantizer
        rows = q.codec.decode(q.payload) if _is_graph(q) else q.vectors
        return rows[: self.nlist].astype(jnp.float32)

    def with_centroids(self, centroids) -> "IVFIndex":
        """This index with its coarse quantizer over `centroids` (nlist, d): a Flat
        index, or a graph index built over them (on the host) when the quantizer is one."""
        if _is_graph(self.quantizer):
            quantizer = build(emptied(self.quantizer, "sequential"),
                              np.asarray(centroids, np.float32))
            return dataclasses.replace(self, quantizer=quantizer)
        quantizer = FlatIndex.create(self.d, self.quantizer.metric, capacity=self.nlist)
        quantizer = dataclasses.replace(
            quantizer, vectors=centroids, sqnorms=dist_ops.squared_norms(centroids),
            ids=jnp.arange(self.nlist, dtype=quantizer.ids.dtype),
            count=jnp.asarray(self.nlist, jnp.int32))
        return dataclasses.replace(self, quantizer=quantizer)

    # --- training -------------------------------------------------------------------
    def train(self, x, *, key=None, niter: int = 10, verbose: bool = False,
              max_points_per_centroid: int = 256):
        """k-means for the coarse quantizer (skipped for one list; 10 iterations, FAISS's
        IVF default), then the codec on the (residual) vectors. Fewer training points than
        39 * nlist warns (FAISS)."""
        if key is None:
            key = jax.random.key(0)
        key_coarse, key_codec = jax.random.split(key)
        x = self.prepare(jnp.asarray(x, jnp.float32))
        if self.nlist == 1:
            centroids = jnp.zeros((1, self.d), jnp.float32)
        else:
            centroids = kmeans(x, self.nlist, key=key_coarse, niter=niter, verbose=verbose,
                               max_points_per_centroid=max_points_per_centroid).centroids
        trained = self.with_centroids(centroids)
        codec_input = x
        if self.by_residual:
            codec_input = x - centroids[trained.assign(x)]
        codec = self.codec.train(codec_input, key=key_codec)
        return dataclasses.replace(trained, codec=codec, is_trained=True)

    # --- pure cores -----------------------------------------------------------------
    def prepare(self, x):
        return dist_ops.normalize_L2(x) if self.metric == "cosine" else x.astype(jnp.float32)

    def assign(self, x, nprobe: int = 1, quantizer_ef: int | None = None):
        """Nearest lists of prepared vectors: (n,) for nprobe 1, else (n, nprobe). A graph
        quantizer searches with ef = quantizer_ef (default: its own default, at least
        nprobe)."""
        params = {}
        if _is_graph(self.quantizer) and quantizer_ef is not None:
            params["ef"] = quantizer_ef
        _, lists = self.quantizer.search_core(x, nprobe, **params)
        return lists[:, 0] if nprobe == 1 else lists

    def row_lists(self) -> jax.Array:
        """List of each storage row; rows past `count` get the sentinel nlist."""
        rows = jnp.arange(self.capacity, dtype=jnp.int32)
        return (jnp.searchsorted(self.offsets, rows, side="right") - 1).astype(jnp.int32)

    def live(self):
        return _storage.live_mask(self.capacity, self.count)

    def _encode(self, x, lists):
        residual = x - self.centroids[lists] if self.by_residual else x
        codes = self.codec.encode(residual)
        return codes, dist_ops.squared_norms(self.codec.decode(codes))

    def insert_rows(self, lists, codes, norms, ids, n_valid, accept):
        """Merge rows into the list-sorted storage (refused rows and padding dropped)."""
        n = lists.shape[0]
        new_lists = jnp.where(accept & (jnp.arange(n) < n_valid), lists, self.nlist)
        keys = jnp.concatenate([self.row_lists(), new_lists.astype(jnp.int32)])
        order = stable_argsort(keys, self.nlist + 1)[: self.capacity]

        def merged(old, new):
            return jnp.concatenate([old, new.astype(old.dtype)])[order]

        counts = jnp.bincount(keys, length=self.nlist + 1)[: self.nlist]
        offsets = jnp.concatenate([jnp.zeros(1, jnp.int32), prefix_sum(counts, dtype=jnp.int32)])
        return dataclasses.replace(
            self, payload=merged(self.payload, codes), norms=merged(self.norms, norms),
            ids=merged(self.ids, ids), offsets=offsets, count=offsets[-1])

    def add_core(self, x, n_valid, ids, valid_rows, lists=None):
        x = self.prepare(x)
        n = x.shape[0]
        if lists is None:
            lists = self.assign(x)
        if ids is None:
            ids = self.count + jnp.arange(n, dtype=self.ids.dtype)
        status = _storage.append_status(self, n_valid, ids, valid_rows)
        codes, norms = self._encode(jnp.where(valid_rows[:, None], x, 0.0), lists)
        new = self.insert_rows(lists, codes, norms, ids, n_valid, status == 0)
        return dataclasses.replace(new, status=self.status | status)

    def remove_core(self, selector):
        live = self.live()
        removed = live & selector(self.ids)
        keep = live & ~removed
        lists = self.row_lists()
        (payload, norms, ids), count = _storage.compact_rows(
            (self.payload, self.norms, self.ids), keep)
        counts = jnp.bincount(jnp.where(keep, lists, self.nlist), length=self.nlist + 1)
        offsets = jnp.concatenate([jnp.zeros(1, jnp.int32),
                                   prefix_sum(counts[: self.nlist], dtype=jnp.int32)])
        return dataclasses.replace(self, payload=payload, norms=norms, ids=ids,
                                   offsets=offsets, count=count), jnp.sum(removed, dtype=jnp.int32)

    def reconstruct_core(self, ids):
        rows, found = _storage.lookup_ids(self.ids, self.live(), ids.astype(self.ids.dtype))
        rows = jnp.clip(rows, 0, max(self.capacity - 1, 0))
        out = self.codec.decode(self.payload[rows])
        if self.by_residual:
            out = out + self.centroids[jnp.clip(self.row_lists()[rows], 0, self.nlist - 1)]
        return jnp.where(found[:, None], out, jnp.nan), found

    # --- search ---------------------------------------------------------------------
    def check_search_params(self, nprobe: int | None = None, quantizer_ef=None):
        if quantizer_ef is not None:
            if not _is_graph(self.quantizer):
                raise InvalidInputError(f"{self.describe()} has a Flat quantizer and takes no "
                                        "quantizer_ef")
            if isinstance(quantizer_ef, bool) or not isinstance(
                    quantizer_ef, (int, np.integer)) or quantizer_ef < 1:
                raise InvalidInputError(
                    f"quantizer_ef must be a positive int, got {quantizer_ef!r}")
            return {**self.check_search_params(nprobe), "quantizer_ef": int(quantizer_ef)}
        if self.exhaustive or self.nlist == 1:
            if nprobe is not None:
                raise InvalidInputError(f"{self.describe()} scans every list and takes no "
                                        "nprobe")
            return {"nprobe_bucket": self.nlist}
        nprobe = 1 if nprobe is None else nprobe
        if isinstance(nprobe, bool) or not isinstance(nprobe, (int, np.integer)) or \
                not 1 <= nprobe <= self.nlist:
            raise InvalidInputError(f"nprobe must be an int in [1, nlist={self.nlist}], "
                                    f"got {nprobe!r}")
        # The bucket (static) sets the shapes; the exact nprobe (traced) masks the extra
        # probes, so nearby nprobe values share one compiled program.
        return {"nprobe_bucket": min(1 << (int(nprobe) - 1).bit_length(), self.nlist),
                "nprobe": np.asarray(nprobe, np.int32)}

    def probe(self, q, nprobe_bucket: int, nprobe=None, quantizer_ef=None):
        """(nq, nprobe_bucket) probed lists of prepared queries; probes past `nprobe`
        (traced) are masked with the sentinel list id."""
        lists = self.assign(q, nprobe_bucket, quantizer_ef)
        lists = lists if nprobe_bucket > 1 else lists[:, None]
        lists = jnp.where(lists < 0, self.nlist, lists)  # a graph quantizer found fewer
        if nprobe is None:
            return lists
        return jnp.where(jnp.arange(nprobe_bucket)[None, :] < nprobe, lists, self.nlist)

    def _plan(self, lists):
        """Work items of the list-major scan (see module docstring)."""
        nq, npb = lists.shape
        pairs = nq * npb
        query_group = int(min(MAX_QUERY_GROUP,
                              _pow2_near(QUERY_GROUP_FACTOR * pairs / self.nlist)))
        row_chunk = int(np.clip(_pow2_near(ROW_CHUNK_FACTOR * self.capacity / self.nlist),
                                MIN_ROW_CHUNK, MAX_ROW_CHUNK))
        row_chunk = min(row_chunk, max(self.capacity, 1))
        lims, perm = bucket_sort(lists.reshape(pairs), self.nlist)
        group_sizes = jnp.diff(lims)
        list_sizes = jnp.diff(self.offsets)
        q_chunks = (group_sizes + query_group - 1) // query_group
        r_chunks = (list_sizes + row_chunk - 1) // row_chunk
        items = q_chunks * r_chunks
        item_end = prefix_sum(items)
        return dict(query_group=query_group, row_chunk=row_chunk, lims=lims, perm=perm,
                    r_chunks=r_chunks, items=items, item_end=item_end, npb=npb, pairs=pairs)

    def _chunk_scores(self, lst, qv, start, row_chunk: int, selector, tables=None):
        """Scores (Qc, row_chunk) of prepared queries qv against the stored rows from
        `start` on that belong to list lst (squared distances for l2, similarities for
        ip), the block's first storage row, and which of its rows count. The block is
        moved back to end at the capacity when it would pass it.

        tables: for product-quantizer codes, the queries' (Qc, M, ksub) inner-product
        tables: the rows are then scored by look-up (FAISS's ADC) instead of decoded
        and multiplied (see `_uses_tables`)."""
        first = jnp.minimum(start, self.capacity - row_chunk)
        rows = first + jnp.arange(row_chunk)
        row_ok = (rows >= start) & (rows < self.offsets[lst + 1])
        codes = jax.lax.dynamic_slice_in_dim(self.payload, first, row_chunk)
        norms = jax.lax.dynamic_slice_in_dim(self.norms, first, row_chunk)
        if selector is not None:
            row_ok &= selector(jax.lax.dynamic_slice_in_dim(self.ids, first, row_chunk))
        centroid = self.centroids[jnp.minimum(lst, self.nlist - 1)]
        if tables is not None:
            scores = self._looked_up_scores(qv, codes, norms, centroid, tables)
        elif self.metric == "l2":
            qr = qv - centroid if self.by_residual else qv
            scores = dist_ops.pairwise_scores(qr, self.codec.decode(codes), "l2",
                                              y_sqnorms=norms)
        else:
            scores = dist_ops.pairwise_scores(qv, self.codec.decode(codes), "ip")
            if self.by_residual:
                scores = scores + (qv @ centroid)[:, None]
        return scores, first, row_ok

    def _uses_tables(self, query_group: int) -> bool:
        """Score product-quantizer codes by look-up tables when few queries share a work
        item: decoding a row costs d gathers however few queries read it, a look-up M
        per query. Measured (2 threads, jann.search QPS, tables vs decoding):
        debian-minilm IVF1024,PQ48, nprobe 6: 1 query per call 1.8k vs 0.66k, 16 queries
        8.4k vs 3.1k, 256 (2 per item) 8.2k vs 6.1k; 2000 queries (16 per item) 7.4k vs
        21k. sift-textures IVF2048,PQ16, nprobe 11: 1.4k vs 1.2k at one query, 10k vs 21k
        at 2000."""
        decode = self.codec.kernel_decode()
        return decode is not None and decode.kind == "pq" and \
            query_group <= MAX_TABLE_QUERY_GROUP

    def _looked_up_scores(self, qv, codes, norms, centroid, tables):
        decode = self.codec.kernel_decode()
        sub = unpack_codes(codes, tables.shape[1], decode.nbits)            # (Lc, M)
        m = jnp.arange(tables.shape[1])[None, :]
        q_dots = jnp.sum(tables[:, m, sub], axis=-1)                        # (Qc, Lc)
        if self.metric != "l2":
            return q_dots + (qv @ centroid)[:, None] if self.by_residual else q_dots
        if not self.by_residual:
            return jnp.maximum(dist_ops.squared_norms(qv)[:, None] + norms[None, :]
                               - 2.0 * q_dots, 0.0)
        # ||q - c - y||^2 = ||q - c||^2 + ||y||^2 + 2 c.y - 2 q.y
        c_dots = jnp.sum(decode.ip_tables(centroid[None])[0][m, sub], axis=-1)  # (Lc,)
        qr = qv - centroid
        return jnp.maximum(dist_ops.squared_norms(qr)[:, None] + (norms + 2.0 * c_dots)[None]
                           - 2.0 * q_dots, 0.0)

    def _item(self, plan, w, q, selector):
        """Queries, rows and the (Qc, Lc) score block of work item w of `_plan`."""
        qg, rc = plan["query_group"], plan["row_chunk"]
        lst = jnp.searchsorted(plan["item_end"], w, side="right",
                               method="scan_unrolled").astype(jnp.int32)
        local = w - (plan["item_end"][lst] - plan["items"][lst])
        j, p = local // plan["r_chunks"][lst], local % plan["r_chunks"][lst]
        pos = plan["lims"][lst] + j * qg + jnp.arange(qg)
        pair_ok = pos < plan["lims"][lst + 1]
        pair = plan["perm"][jnp.clip(pos, 0, plan["pairs"] - 1)]
        query = pair // plan["npb"]
        scores, first, row_ok = self._chunk_scores(
            lst, q[query], self.offsets[lst] + p * rc, rc, selector)
        ids = jax.lax.dynamic_slice_in_dim(self.ids, first, rc)
        ok = pair_ok[:, None] & row_ok[None, :]
        return pair, pair_ok, query, scores, ok, ids

    def _scan_shape(self, nq: int, npb: int, k: int) -> dict:
        """Static shape of `scan` for nq queries probing npb lists each (see the rule in
        the module docstring)."""
        pairs = nq * npb
        query_group = int(min(MAX_QUERY_GROUP,
                              _pow2_near(QUERY_GROUP_FACTOR * pairs / self.nlist)))
        row_chunk = int(np.clip(_pow2_near(ROW_CHUNK_FACTOR * self.capacity / self.nlist),
                                MIN_ROW_CHUNK, MAX_ROW_CHUNK))
        row_chunk = max(1, min(row_chunk, self.capacity))
        # A pair's candidates: the first row chunk whole, then the k best of the list's
        # other chunks, padded to whole 32-column blocks for the two-stage selection.
        extra = -(-(row_chunk + k) // 32) * 32 - row_chunk
        return dict(query_group=query_group, row_chunk=row_chunk, extra=extra,
                    width=row_chunk + extra, pairs=pairs,
                    bytes_per_query=npb * (row_chunk + extra + k) * 4)

    def scan(self, q, lists, k: int, selector=None):
        """Top-k over the given probed lists (nq, nprobe) of prepared queries q."""
        nq, npb = lists.shape
        similarity = dist_ops.is_similarity(self.metric)
        shape = self._scan_shape(nq, npb, k)
        qg, rc, extra, width, pairs = (shape[f] for f in (
            "query_group", "row_chunk", "extra", "width", "pairs"))
        if not self.capacity:
            return (jnp.full((nq, k), -jnp.inf if similarity else jnp.inf, jnp.float32),
                    jnp.full((nq, k), -1, self.ids.dtype))
        list_sizes = jnp.diff(self.offsets)
        r_chunks = (list_sizes + rc - 1) // rc
        # Lists are scanned with the most row chunks first, so that the items of a step
        # (vmapped: each runs as many chunk iterations as the longest) have alike lists;
        # the pairs are sorted by that rank, so the items' queries follow in scan order.
        order = stable_argsort(jnp.maximum(MAX_ORDERED_CHUNKS - r_chunks, 0),
                               MAX_ORDERED_CHUNKS + 1)
        rank = jnp.zeros((self.nlist + 1,), jnp.int32).at[order].set(
            jnp.arange(self.nlist, dtype=jnp.int32)).at[self.nlist].set(self.nlist)
        lims, perm = bucket_sort(rank[lists].reshape(pairs), self.nlist)
        q_chunks = (jnp.diff(lims) + qg - 1) // qg
        item_end = prefix_sum(q_chunks)
        n_items = item_end[-1]

        tables = self.codec.kernel_decode().ip_tables(q) if self._uses_tables(qg) else None

        def item(w):
            o = jnp.minimum(jnp.searchsorted(item_end, w, side="right", method="scan_unrolled"),
                            self.nlist - 1)
            lst = order[o]
            pos = lims[o] + (w - item_end[o] + q_chunks[o]) * qg
            query = perm[jnp.clip(pos + jnp.arange(qg), 0, pairs - 1)] // npb
            qv = q[query]
            q_tables = None if tables is None else tables[query]

            def keyed(c):
                scores, first, row_ok = self._chunk_scores(
                    lst, qv, self.offsets[lst] + c * rc, rc, selector, q_tables)
                scores = -scores if similarity else scores
                return jnp.where(row_ok[None, :], scores, jnp.inf), first

            # The first chunk's scores are kept whole; later chunks of a long list are
            # folded into k running best slots.
            first_scores, _ = keyed(0)

            def fold(c, best):
                scores, first = keyed(c)
                rows = jnp.broadcast_to(first + jnp.arange(rc, dtype=jnp.int32), scores.shape)
                return merge_smallest(*best, scores, rows, k)

            best = (jnp.full((qg, k), jnp.inf, jnp.float32), jnp.full((qg, k), -1, jnp.int32))
            best_d, best_rows = jax.lax.fori_loop(
                1, jnp.where(w < n_items, r_chunks[lst], 0), fold, best)
            pos = jnp.where(w < n_items, pos, pairs)
            padding = jnp.full((qg, extra - k), jnp.inf, jnp.float32)
            return pos, jnp.concatenate([first_scores, best_d, padding], 1), best_rows

        def body(step, out):
            # The step's items cover consecutive sorted pairs from its first item's: their
            # rows are gathered into one block written in place (the rows past an item's
            # pairs are overwritten by the next item's, or lie past all pairs).
            pos, scores, rows = jax.vmap(item)(step * ITEMS_PER_STEP +
                                               jnp.arange(ITEMS_PER_STEP))
            at = pos[0] + jnp.arange(ITEMS_PER_STEP * qg)
            which = jnp.searchsorted(pos, at, side="right", method="compare_all") - 1
            which = jnp.clip(which, 0, ITEMS_PER_STEP - 1)
            row = jnp.clip(at - pos[which], 0, qg - 1)
            return tuple(jax.lax.dynamic_update_slice_in_dim(o, block[which, row], pos[0], 0)
                         for o, block in zip(out, (scores, rows)))

        # pairs + one step's rows, so that no write is moved back from the end; the last
        # row is +inf, the candidates of the probes that scan nothing
        out = (jnp.zeros((pairs + ITEMS_PER_STEP * qg + 1, width), jnp.float32).at[-1].set(
            jnp.inf), jnp.zeros((pairs + ITEMS_PER_STEP * qg, k), jnp.int32))
        sorted_scores, sorted_rows = jax.lax.fori_loop(
            0, (n_items + ITEMS_PER_STEP - 1) // ITEMS_PER_STEP, body, out)
        at = jnp.zeros((pairs,), jnp.int32).at[perm].set(jnp.arange(pairs, dtype=jnp.int32))
        at = jnp.where(lists < self.nlist, at.reshape(nq, npb), sorted_scores.shape[0] - 1)
        values, cols = smallest_k_gathered(sorted_scores, at, k)
        probe, col = jnp.maximum(cols, 0) // width, jnp.maximum(cols, 0) % width
        lst = jnp.minimum(jnp.take_along_axis(lists, probe, 1), self.nlist - 1)
        first_rows = jnp.minimum(self.offsets[lst], self.capacity - rc) + col
        folded_rows = sorted_rows[jnp.minimum(jnp.take_along_axis(at, probe, 1), pairs - 1),
                                  jnp.clip(col - rc, 0, k - 1)]
        rows = jnp.clip(jnp.where(col < rc, first_rows, folded_rows), 0, self.capacity - 1)
        ids = jnp.where(cols < 0, -1, self.ids[rows])
        return (-values if similarity else values), ids

    def _gathers(self, nq: int, npb: int) -> bool:
        """Whether `scan_gathered` serves nq queries probing npb lists each: when few
        queries probe each list on average (the list-major scan reads a list once for
        all of them); for codes scored by look-up tables (product codes of small
        batches, `_uses_tables`) only single queries.

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
        if self.nlist == 1:
            return nq <= GATHER_MAX_SINGLE_LIST_QUERIES
        if self._uses_tables(self._scan_shape(nq, npb, 1)["query_group"]):
            return nq == 1
        sharing = nq * npb / self.nlist
        limit = GATHER_MAX_SHARING if self.d <= GATHER_WIDE_D else GATHER_MAX_SHARING_WIDE
        return sharing <= limit

    def _gathered_shape(self, npb: int) -> dict:
        """Static shape of `scan_gathered`: tiles of `tile` rows; each query's tiles are
        scored in blocks of `block` tiles (the power of two at or above 1.5x the mean
        number a query probes, so that most queries need one block), `chunk` tiles at a
        time (half a mean query's, at least MIN_GATHER_CHUNK rows, at most
        GATHER_CHUNK_BYTES of decoded rows per query)."""
        tile = int(GATHER_TILE_ROWS)
        mean_tiles = npb * (self.capacity / self.nlist / tile + 0.5)
        block = 1 << int(np.ceil(np.log2(max(1.5 * mean_tiles, 1.0))))
        block = int(np.clip(block, MIN_GATHER_BLOCK // tile, MAX_GATHER_BLOCK // tile))
        chunk = min(GATHER_CHUNK_BYTES // (4 * self.d * tile),
                    max(mean_tiles / GATHER_CHUNKS, MIN_GATHER_CHUNK // tile))
        chunk = 1 << max(0, int(max(chunk, 1)).bit_length() - 1)
        return dict(tile=tile, block=block, chunk=int(min(block, chunk)))

    def scan_gathered(self, q, lists, k: int, selector=None):
        """`scan` for few queries per list: query-major, each query's probed lists cut
        into tiles of contiguous rows, gathered back to back (a query reads its lists
        and nothing else; no list-major bookkeeping, and only the last tile of a list
        is padded). Product codes are scored by look-up tables, others decoded.

        Tile positions 0.. run over the query's probed lists in probe order; they are
        scored a chunk at a time into a block of scores, whose k best are merged into
        the running result (one block unless the query probes more than `block` tiles).
        Queries go GATHER_QUERY_GROUP at a time."""
        nq, npb = lists.shape
        similarity = dist_ops.is_similarity(self.metric)
        if not self.capacity:
            return (jnp.full((nq, k), -jnp.inf if similarity else jnp.inf, jnp.float32),
                    jnp.full((nq, k), -1, self.ids.dtype))
        shape = self._gathered_shape(npb)
        tile, block, chunk = shape["tile"], shape["block"], shape["chunk"]
        tile = min(tile, self.capacity)
        group = GATHER_QUERY_GROUP if nq % GATHER_QUERY_GROUP == 0 else 1
        list_starts = jnp.concatenate([self.offsets, self.offsets[-1:]])
        list_sizes = jnp.concatenate([jnp.diff(self.offsets), jnp.zeros((1,), jnp.int32)])
        centroids = self.centroids
        groups = jnp.arange(group)[:, None]

        first_row, sizes = list_starts[lists], list_sizes[lists]     # (nq, npb)
        n_tiles = (sizes + tile - 1) // tile
        ends = prefix_sum(n_tiles, axis=1)                            # in tiles
        first_tile = ends - n_tiles
        total = ends[:, -1]
        if self.by_residual:
            probe_c = centroids[jnp.minimum(lists, self.nlist - 1)]
            probe_q = q[:, None, :] - probe_c
            probe_bias = dist_ops.squared_norms(probe_q) if self.metric == "l2" else \
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
            moved = jnp.clip(start, 0, self.capacity - tile)
            rows = moved[..., None] + jnp.arange(tile, dtype=jnp.int32)
            return moved, rows, (rows >= start[..., None]) & (rows < stop[..., None])

        decode = self.codec.kernel_decode()
        by_tables = decode is not None and decode.kind == "pq"

        def group_tables(qv, probe_q):
            """Product codes are scored by look-up (FAISS's ADC): inner-product tables
            (G, [npb,] M, ksub) of each probe's residual query for l2 by residual (one
            table per probe), of the query otherwise."""
            if self.by_residual and self.metric == "l2":
                t = decode.ip_tables(probe_q.reshape(-1, self.d))
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
                    self.payload, r, tile))(moved.reshape(-1))
                norms = jax.vmap(lambda r: jax.lax.dynamic_slice_in_dim(
                    self.norms, r, tile))(moved.reshape(-1)).reshape(group, chunk, tile)
                if by_tables:
                    dots = looked_up_dots(tables, codes, probe)
                else:
                    y = self.codec.decode(codes.reshape((-1,) + codes.shape[2:])).reshape(
                        group, chunk, tile, self.d)
                if self.by_residual and self.metric == "l2":
                    if not by_tables:
                        pq = jnp.take_along_axis(probe_q, probe[..., None], 1)
                        dots = jnp.einsum("gctd,gcd->gct", y, pq)
                    s = jnp.take_along_axis(probe_bias, probe, 1)[..., None] + norms \
                        - 2.0 * dots
                    s = jnp.maximum(s, 0.0)
                elif self.metric == "l2":
                    if not by_tables:
                        dots = jnp.einsum("gctd,gd->gct", y, qv)
                    s = jnp.maximum(dist_ops.squared_norms(qv)[:, None, None] + norms
                                    - 2.0 * dots, 0.0)
                else:
                    s = -(dots if by_tables else jnp.einsum("gctd,gd->gct", y, qv))
                    if self.by_residual:
                        s = s - jnp.take_along_axis(probe_bias, probe, 1)[..., None]
                if selector is not None:
                    ok &= selector(self.ids[rows])
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
        ids = jnp.where(best_pos < 0, -1, self.ids[moved + jnp.maximum(best_pos, 0) % tile])
        return (-best if similarity else best), ids

    def search_parameter_space(self) -> dict[str, tuple]:
        if self.exhaustive or self.nlist == 1:
            return {}
        return {"nprobe": nprobe_values(self.nlist)}

    def search_core(self, xq, k: int, selector=None, nprobe_bucket: int = 1, nprobe=None,
                    n_queries=None, quantizer_ef=None, backend: str = "auto"):
        """backend: "xla" (the list-major scan below), "pallas" (`jann.ops.ivf_scan`, the
        query-major kernel; for the codecs whose `kernel_decode()` describes their codes to
        it: raw float, 8-bit scalar and PQ codes; XLA for the others) or "auto"
        (`jann.ops.backend`: XLA until a GPU measurement says otherwise)."""
        q = self.prepare(xq)

        def probe(b):
            return self.probe(b, nprobe_bucket, nprobe, quantizer_ef)

        if n_queries is None:
            lists = probe(q)
        else:  # padded rows are not assigned (blocks past n_queries are skipped)
            lists = map_query_blocks(probe, q, PROBE_QUERY_BLOCK, n_queries)
            real = jnp.arange(q.shape[0])[:, None] < n_queries
            lists = jnp.where(real, lists, self.nlist)

        def xla_scan(q, lists):
            if self._gathers(q.shape[0], lists.shape[1]):
                return self.scan_gathered(q, lists, k, selector)
            block = min(SCAN_QUERY_BLOCK, _scan_query_block(
                self._scan_shape(q.shape[0], lists.shape[1], k)["bytes_per_query"]))
            if q.shape[0] <= block:
                return self.scan(q, lists, k, selector)
            return map_query_blocks(lambda b: self.scan(*b, k, selector), (q, lists), block,
                                    n_queries)

        allowed = self.live() if selector is None else self.live() & selector(self.ids)
        return ivf_search(
            q, lists, k, "ip" if dist_ops.is_similarity(self.metric) else "l2",
            decode=self.codec.kernel_decode(), offsets=self.offsets, payload=self.payload,
            norms=self.norms, allowed=allowed, ids=self.ids, centroids=self.centroids,
            by_residual=self.by_residual, xla_scan=xla_scan, backend=backend)

    def range_core(self, xq, radius, capacity: int, selector=None, nprobe_bucket: int = 1,
                   nprobe=None, quantizer_ef=None, backend: str = "auto"):
        """backend: range search has no kernel; XLA whatever it says."""
        q = self.prepare(xq)
        nq = q.shape[0]
        plan = self._plan(self.probe(q, nprobe_bucket, nprobe, quantizer_ef))
        similarity = dist_ops.is_similarity(self.metric)
        radius = jnp.asarray(radius, jnp.float32)

        def body(w, state):
            counts, dist, ids_out = state
            _, pair_ok, query, scores, ok, ids = self._item(plan, w, q, selector)
            hit = ok & (scores > radius if similarity else scores < radius)
            safe_q = jnp.where(pair_ok, query, 0)
            slot = counts[safe_q][:, None] + prefix_sum(hit, axis=1, dtype=jnp.int32) - 1
            slot = jnp.where(hit, slot, capacity)
            target_q = jnp.where(pair_ok, query, nq)[:, None]
            dist = dist.at[target_q, slot].set(scores, mode="drop")
            ids_out = ids_out.at[target_q, slot].set(
                jnp.broadcast_to(ids[None, :], hit.shape), mode="drop")
            counts = counts.at[jnp.where(pair_ok, query, nq)].add(
                jnp.sum(hit, axis=1, dtype=jnp.int32), mode="drop")
            return counts, dist, ids_out

        fill = -jnp.inf if similarity else jnp.inf
        state = (jnp.zeros((nq,), jnp.int32), jnp.full((nq, capacity), fill, jnp.float32),
                 jnp.full((nq, capacity), -1, self.ids.dtype))
        if self.capacity:
            state = jax.lax.fori_loop(0, plan["item_end"][-1], body, state)
        return state
