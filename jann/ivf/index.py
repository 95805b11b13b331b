"""The inverted-file index: IVF-Flat, IVF-PQ, IVF-SQ, IVF-RQ, and the flat-coded indexes.

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
with jax_enable_x64, int64 ids make it 1.06x). An add appends its
rows after the stored ones, as the unsorted tail (`jann.ivf.tail`: O(batch) in place
when the index is donated), and merges everything into sorted order (a stable sort of
list ids and one gather: O(n), no recompile within a capacity) only when the tail is
full; a removal compacts in place order-preserving. Pages with a page table would make
adds O(batch) too, at the price of per-list slack; CSR was chosen for exact memory and
because search reads each list as one contiguous run.

Search: `probe` picks each query's nprobe nearest lists; the lists are scanned list-major
(`jann.ivf.list_major`: one read of a list serves every query probing it; large batches
and range search) or, for few queries per list, query-major (`jann.ivf.gathered`); a
flat-coded index's one list as a tiled brute force (`jann.ivf.one_list`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jann import _storage, programs
from jann._pytree import pytree_dataclass, static
from jann.errors import InvalidInputError
from jann.flat import FlatIndex
from jann.graph import GraphIndex, build, emptied
from jann.index import Index
from jann.ivf import gathered, list_major, one_list, tail
from jann.kmeans import kmeans
from jann.ops import distances as dist_ops
from jann.ops.ivf_scan import ivf_search
from jann.ops.knn import map_query_blocks
from jann.ops.sorting import list_offsets
from jann.quantizers.layout import encoded_row

__all__ = ["IVFIndex", "nprobe_values"]

# Queries of a padded batch, and the rows of a padded add, are assigned to lists (and
# encoded) in blocks of this many rows, so that the blocks past the real rows are skipped
# (10000 queries padded to 16384).
PROBE_QUERY_BLOCK = 2048


def _is_graph(quantizer) -> bool:
    return isinstance(quantizer, GraphIndex)


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
    count:     () int32 live rows: offsets[-1] sorted, then the tail.
    status:    () int32 refused-write bits.
    n_added:   () rows ever added (ids dtype): the next sequential id; removals keep ids,
               so an id is never handed out twice.
    tail_lists: (T,) int32 list of each tail row, rows offsets[-1]..count-1 (recent
               adds, unsorted; `jann.ivf.tail`).
    """

    # jann.search may pad a query batch to a bucket and pass the real row count
    # (`n_queries`): padded rows probe no list, so they cost no scan work.
    skips_padded_queries = True
    # rows past n_valid are neither assigned nor encoded (blocks of PROBE_QUERY_BLOCK)
    skips_padded_adds = True
    inverted_lists = True

    quantizer: FlatIndex | GraphIndex
    codec: object
    payload: jax.Array
    norms: jax.Array
    ids: jax.Array
    offsets: jax.Array
    count: jax.Array
    status: jax.Array
    n_added: jax.Array
    tail_lists: jax.Array
    metric: str = static("l2", choices=dist_ops.METRICS)
    id_mode: str = static("sequential", choices=_storage.ID_MODES)
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
            n_added=jnp.zeros((), _storage.empty_ids(0).dtype),
            tail_lists=tail.empty_tail(0, nlist),
            metric=metric, id_mode=id_mode, by_residual=by_residual,
            exhaustive=exhaustive, is_trained=False, description=description)

    @classmethod
    def restored_fields(cls, fields: dict) -> dict:
        """A checkpoint written before the tail existed: every row in the lists."""
        fields = super().restored_fields(fields)
        if "tail_lists" not in fields and "payload" in fields and "offsets" in fields:
            fields = {**fields, "tail_lists": tail.empty_tail(
                np.shape(fields["payload"])[0], np.shape(fields["offsets"])[0] - 1)}
        return fields

    @property
    def d(self) -> int:
        return self.quantizer.d

    def grown(self, capacity: int) -> "IVFIndex":
        index = self
        if tail.tail_rows(capacity, self.nlist) != tail.tail_size(self):
            index = dataclasses.replace(tail.flushed(self),
                                        tail_lists=tail.empty_tail(capacity, self.nlist))
        return dataclasses.replace(
            index, payload=_storage.pad_rows(index.payload, capacity),
            norms=_storage.pad_rows(index.norms, capacity),
            ids=_storage.pad_rows(index.ids, capacity, -1))

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
        return tail.row_lists(self)

    def live(self):
        return _storage.live_mask(self.capacity, self.count)

    def flushed(self) -> "IVFIndex":
        """This index with every row in the sorted lists (its tail merged)."""
        return tail.flushed(self)

    def _encode(self, x, lists):
        residual = x - self.centroids[lists] if self.by_residual else x
        codes = self.codec.encode(residual)
        return codes, dist_ops.squared_norms(self.codec.decode(codes))

    def insert_rows(self, lists, codes, norms, ids, n_valid, accept):
        """Add rows to the storage (the tail, or merged into the lists when it is full;
        refused rows and padding dropped)."""
        return tail.append(self, lists, codes, norms, ids, n_valid, accept)

    def add_core(self, x, n_valid, ids, valid_rows, lists=None):
        x = self.prepare(x)
        n = x.shape[0]
        if lists is None:
            lists = map_query_blocks(self.assign, x, PROBE_QUERY_BLOCK, n_valid)
        if ids is None:
            ids = self.n_added + jnp.arange(n, dtype=self.ids.dtype)
        status = _storage.append_status(self, n_valid, ids, valid_rows)
        codes, norms = map_query_blocks(
            lambda rows: self._encode(*rows),
            (jnp.where(valid_rows[:, None], x, 0.0), lists), PROBE_QUERY_BLOCK, n_valid)
        new = self.insert_rows(lists, codes, norms, ids, n_valid, status == 0)
        return dataclasses.replace(new, status=self.status | status,
                                   n_added=_storage.advanced(self.n_added, n_valid, status))

    def remove_core(self, selector):
        index = self.flushed()
        live = index.live()
        removed = live & selector(index.ids)
        keep = live & ~removed
        lists = index.row_lists()
        (payload, norms, ids), count = _storage.compact_rows(
            (index.payload, index.norms, index.ids), keep)
        counts = jnp.bincount(jnp.where(keep, lists, index.nlist), length=index.nlist + 1)
        offsets = list_offsets(counts[: index.nlist])
        return dataclasses.replace(index, payload=payload, norms=norms, ids=ids,
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

    def scan(self, q, lists, k: int, selector=None):
        """Top-k over the given probed lists (nq, nprobe) of prepared queries q (the
        list-major scan; `jann.search_preassigned`)."""
        return tail.with_tail_hits(self, q, lists, k, selector,
                                   list_major.scan(self, q, lists, k, selector))

    def search_parameter_space(self) -> dict[str, tuple]:
        if self.exhaustive or self.nlist == 1:
            return {}
        return {"nprobe": nprobe_values(self.nlist)}

    def search_compiler_options(self, nq: int) -> tuple:
        """Product codes: `programs.PRODUCT_CODE_OPTIONS`, except for large batches over
        one list (the tiled brute force of "PQ16" was faster with XLA's defaults there)."""
        decode = self.codec.kernel_decode()
        if decode is None or decode.kind != "pq" or \
                (self.nlist == 1 and nq > programs.PRODUCT_CODE_MAX_ONE_LIST_QUERIES):
            return ()
        return programs.PRODUCT_CODE_OPTIONS

    def search_core(self, xq, k: int, selector=None, nprobe_bucket: int = 1, nprobe=None,
                    n_queries=None, quantizer_ef=None, backend: str = "auto"):
        """backend: "xla" (the gathered or list-major scan, `xla_scan`), "pallas" (`jann.ops.ivf_scan`, the
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
            if one_list.scans_one_list(self, q.shape[0]):
                return one_list.scan_one_list(self, q, k, selector, n_queries)
            if gathered.gathers(self, q.shape[0], lists.shape[1]):
                return gathered.scan_gathered(self, q, lists, k, selector)
            return list_major.scan_in_blocks(self, q, lists, k, selector, n_queries)

        allowed = self.live() if selector is None else self.live() & selector(self.ids)
        found = ivf_search(
            q, lists, k, "ip" if dist_ops.is_similarity(self.metric) else "l2",
            decode=self.codec.kernel_decode(), offsets=self.offsets, payload=self.payload,
            norms=self.norms, allowed=allowed, ids=self.ids, centroids=self.centroids,
            by_residual=self.by_residual, xla_scan=xla_scan, backend=backend)
        return tail.with_tail_hits(self, q, lists, k, selector, found)

    def range_core(self, xq, radius, capacity: int, selector=None, nprobe_bucket: int = 1,
                   nprobe=None, quantizer_ef=None, backend: str = "auto"):
        """backend: range search has no kernel; XLA whatever it says."""
        q = self.prepare(xq)
        lists = self.probe(q, nprobe_bucket, nprobe, quantizer_ef)
        found = list_major.range_scan(self, q, lists, radius, capacity, selector)
        return tail.with_tail_range_hits(self, q, lists, radius, selector, found)
