"""Sharding and replication over devices and hosts (FAISS `IndexShards`, `IndexReplicas`,
`index_cpu_to_all_gpus`), on JAX's own runtime: `jax.sharding` on one host and
`jax.distributed` across hosts, the same code.

    mesh = jax.make_mesh((8,), ("x",))
    sharded = jann.shard(index, mesh, axis="x")      # database split over the 8 devices
    D, I = jann.search(sharded, xq, k=10)            # = jann.search(index, xq, 10)
    replicas = jann.replicate(index, mesh)           # copies; queries split over devices

Layout. A `ShardedIndex` is a pytree wrapping either
- (shard mode) a *stack* of per-shard indexes, every leaf with a leading shard axis (the
  layout `jann.stack` builds), placed with `NamedSharding(mesh, P(axis))`: device s holds
  shard s, an ordinary FlatIndex / IVFIndex over a subset of the vectors. IVF shards all
  hold the same coarse quantizer and codec (one copy per device), so a query probes the
  same lists on every shard and the union of the shards' candidates is the unsharded
  index's. Vectors are dealt round-robin in (list, id) order, so every inverted list is
  spread evenly over the devices; later adds go to the least-filled shards. A graph
  index is split into one sub-graph per device, built over every S-th vector in id
  order (edges name rows, so rows cannot move between shards without a rebuild); a
  search runs every sub-graph's beam search and merges, later adds extend the
  least-filled sub-graphs.
- (replicate mode) the plain index, replicated (`P()`); queries are split over the axis.

Search runs under `shard_map`: each device takes the top-k of its shard, then one merge
(an all-gather of the k candidates of every device, and a top-k over the S * k of them,
ties broken by the smaller id, as the unsharded index orders sequential ids). Results are
the unsharded index's: Flat bit for bit; IVF (same quantizer, same probed lists) the same
ids, distances to float32 rounding (a shard's list scan runs on blocks of another shape);
graph: approximate, as the unsharded graph, but not its results (other graphs; each
sub-graph is searched with the same ef over 1/S of the rows). Inside your own
`shard_map`, use `search_shard` (per-device search + merge).

Ids. Shards store the user-visible ids: an index with sequential ids keeps them global
(0..ntotal-1, numbered in the order vectors were added, as unsharded); after `remove_ids`
Flat renumbers them and IVF and graph indexes keep them, as the unsharded indexes do.
Placement options: `dtype=` ("float16", "bfloat16": Flat storage) and `ids=` ("int32",
"int64"; int64 needs jax_enable_x64; an add whose ids do not fit int32 is refused, never
truncated).

Build. `jann.train` of a sharded IVF index runs the coarse k-means with `kmeans_sharded`:
sums and counts are reduced across devices with `psum`, so the training vectors stay
where they are (only the k initial centroids and a sample of at most `CODEC_SAMPLE` rows
for the codec are collected). `jann.add` gives each vector to one device: the add chunk
(at most 16384 rows, `jann.api.ADD_BUCKETS`) is broadcast to the devices of the axis and
each stores only the rows it owns (an all-to-all would move less; a chunk is small).

Checkpoints. `jann.save` writes each device's shards from the process that holds them
(Orbax; no gather); `jann.load(path, mesh=...)` restores onto a mesh of any size. A
layout of S saved shards restored on M devices is redistributed in place: devices form
gcd(S, M) groups, each group reads its S / gcd saved shards (Orbax's sharded restore
reads only those) and deals their rows round-robin over its M / gcd devices. A device so
holds S / gcd saved shards for a moment: just its own share when M divides S (8 -> 4 ->
1), one saved shard when S divides M (1 -> 8: a shard that fitted one device of the
saving mesh), all S otherwise (8 -> 3). No layout is refused: any device count can hold
any checkpoint whose vectors fit. Graph sub-graphs are restored as saved onto the same
device count; onto another count they are rebuilt on the host from their rows (one
process), and without a mesh merged into one graph.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jann import _storage
from jann._inputs import (as_vectors, check_finite, delegated_search_params,
                          split_search_params)
from jann._pytree import pytree_dataclass
from jann.errors import InvalidInputError
from jann import graph as graph_lib
from jann.flat import STORAGE_DTYPES, FlatIndex
from jann.graph import GraphIndex
from jann.ivf import IVFIndex
from jann.kmeans import KMeansResult, assign as kmeans_assign, check_training_points
from jann.kmeans import update_centroids
from jann.ops import distances as dist_ops

__all__ = ["ShardedIndex", "shard", "replicate", "to_devices", "unshard", "kmeans_sharded",
           "search_shard", "merge_results", "device_bytes", "CODEC_SAMPLE"]

try:  # jax >= 0.7
    _shard_map = jax.shard_map
    _NO_REPLICATION_CHECK = {"check_vma": False}
except AttributeError:  # pragma: no cover - older jax
    from jax.experimental.shard_map import shard_map as _shard_map
    _NO_REPLICATION_CHECK = {"check_rep": False}

# Rows the codec of a sharded IVF index is trained on (FAISS trains PQ8 on 256 * 256).
CODEC_SAMPLE = 65536


def _smap(f, mesh, in_specs, out_specs):
    # The checker cannot infer that an all-gather followed by the same merge on every
    # device gives replicated values; the merges below make them equal by construction.
    return _shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                      **_NO_REPLICATION_CHECK)


def _constrain(tree, mesh, spec):
    """Lay tree out as `spec` says. A mesh with Explicit axes (jax.make_mesh's default)
    types every array with its sharding and shard_map then takes only matching inputs;
    on Auto axes shard_map moves the data itself."""
    explicit = getattr(getattr(jax.sharding, "AxisType", None), "Explicit", None)
    if explicit is None or explicit not in getattr(mesh, "axis_types", ()):
        return tree
    sharding = NamedSharding(mesh, spec)
    return jax.tree.map(lambda a: jax.sharding.reshard(jnp.asarray(a), sharding), tree)


def _local(block):
    """The one shard a device holds, from its (1, ...) block of the stacked pytree."""
    return jax.tree.map(lambda a: a[0], block)


def _restack(index):
    return jax.tree.map(lambda a: a[None], index)


def _or_reduce(bits, axis=0):
    # Bit by bit with max: the SPMD partitioner has no OR reduction (status words use
    # the low bits of _storage's flags).
    return functools.reduce(jnp.bitwise_or,
                            [jnp.max(bits & (1 << b), axis=axis) for b in range(8)])


# ------------------------------------------------------------------- the index type
@pytree_dataclass(data=("index",), meta=("mesh", "shard_axis", "query_axis", "id_mode"))
@dataclasses.dataclass(frozen=True)
class ShardedIndex:
    """An index placed on a device mesh; `jann.search` / `add` / `remove_ids` /
    `reconstruct` / `range_search` / `train` / `save` take it like any index.

    index:      shard mode: the stacked per-shard indexes (leading axis = shard), placed
                P(shard_axis); replicate mode: the index itself, replicated.
    mesh:       the `jax.sharding.Mesh` (static).
    shard_axis: mesh axis the database is split over (None: replicated).
    query_axis: mesh axis queries are split over (None: every device sees all queries).
    id_mode:    the ids users see ("sequential" ids stay global over the shards).
    """

    index: object
    mesh: Mesh
    shard_axis: str | None = None
    query_axis: str | None = None
    id_mode: str = "sequential"

    # --- static description ------------------------------------------------------
    @property
    def sharded(self) -> bool:
        return self.shard_axis is not None

    @property
    def nshards(self) -> int:
        return self.mesh.shape[self.shard_axis] if self.sharded else 1

    @property
    def spec(self) -> P:
        """PartitionSpec of `self.index` (a prefix for every leaf): for `in_specs`."""
        return P(self.shard_axis) if self.sharded else P()

    @property
    def per_shard(self):
        """One shard's structure (shapes and configuration; leaves are ShapeDtypeStructs
        in shard mode): what the static properties below read."""
        if not self.sharded:
            return self.index
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), self.index)

    @property
    def d(self) -> int:
        return self.per_shard.d

    @property
    def metric(self) -> str:
        return self.per_shard.metric

    @property
    def is_trained(self) -> bool:
        return self.per_shard.is_trained

    @property
    def nlist(self) -> int:
        if not isinstance(self.per_shard, IVFIndex):
            raise AttributeError("nlist")
        return self.per_shard.nlist

    @property
    def capacity(self) -> int:
        """Rows that fit over all shards (an add fits while ntotal + n <= capacity,
        since adds fill the least-filled shards first)."""
        return self.nshards * self.per_shard.capacity

    def describe(self) -> str:
        inner = self.per_shard.describe()
        if self.sharded and self.id_mode == "sequential":
            inner = inner.split(",", 1)[1]  # shards keep global ids as "IDMap"
        if self.sharded:
            return f"{inner} (sharded over {self.nshards} devices, axis {self.shard_axis!r})"
        return f"{inner} (replicated on {self.mesh.size} devices)"

    # --- storage bookkeeping (what jann.api reads) ---------------------------------
    @property
    def count(self):
        return jnp.sum(self.index.count) if self.sharded else self.index.count

    @property
    def status(self):
        return _or_reduce(self.index.status) if self.sharded else self.index.status

    @property
    def ids(self):
        return self.index.ids

    def ntotal_live(self):
        """Vectors a search can return (a graph's tombstoned rows not counted)."""
        if not hasattr(self.per_shard, "ntotal_live"):
            return self.count
        if not self.sharded:
            return self.index.ntotal_live()
        axis = self.shard_axis
        return self._map(lambda local: jax.lax.psum(local.ntotal_live(), axis), (), (), P())

    def shard_counts(self) -> np.ndarray:
        """Vectors held by each shard (host ints, shard order)."""
        counts = self.index.count
        if not counts.is_fully_addressable:  # other processes hold some: replicate first
            counts = jax.jit(lambda c: c, out_shardings=NamedSharding(self.mesh, P()))(counts)
        return np.atleast_1d(np.asarray(counts))

    def _map(self, fn, args, arg_specs, out_specs):
        """fn(this device's index, *its parts of args) under shard_map on the mesh."""
        sharded = self.sharded

        def body(block, *local_args):
            return fn(_local(block) if sharded else block, *local_args)

        specs = (self.spec, *arg_specs)
        args = tuple(_constrain(a, self.mesh, spec) for a, spec in zip((self.index, *args), specs))
        return _smap(body, self.mesh, specs, out_specs)(*args)

    def _wrap(self, local):
        return _restack(local) if self.sharded else local

    def grown(self, capacity: int) -> "ShardedIndex":
        """Room for `capacity` rows over all shards (host side)."""
        per = -(-capacity // self.nshards)
        if self.sharded:
            per = max(per, int(self.shard_counts().max()))
        new = self._map(lambda ix: self._wrap(ix.grown(per)), (), (), self.spec)
        return dataclasses.replace(self, index=new)

    # --- search --------------------------------------------------------------------
    def check_search_params(self, **params):
        return delegated_search_params(self.per_shard, self.describe(), params)

    def _pad_queries(self, xq):
        parts = self.mesh.shape[self.query_axis] if self.query_axis else 1
        extra = -xq.shape[0] % parts
        return jnp.pad(xq, ((0, extra), (0, 0))) if extra else xq

    def search_core(self, xq, k: int, selector=None, **params):
        static, dynamic = split_search_params(params)
        nq = xq.shape[0]
        qspec = P(self.query_axis)
        axis = self.shard_axis

        def fn(local, q, sel, dyn):
            distances, ids = local.search_core(q, k, sel, **static, **dyn)
            if axis is None:
                return distances, ids
            return merge_results(distances, ids, axis, k,
                                 similarity=dist_ops.is_similarity(local.metric))

        distances, ids = self._map(fn, (self._pad_queries(xq), selector, dynamic),
                                   (qspec, P(), P()), (qspec, qspec))
        return distances[:nq], ids[:nq]

    def range_core(self, xq, radius, capacity: int, selector=None, **params):
        static, dynamic = split_search_params(params)
        nq = xq.shape[0]
        qspec = P(self.query_axis)
        axis = self.shard_axis

        def fn(local, q, r, sel, dyn):
            counts, distances, ids = local.range_core(q, r, capacity, sel, **static, **dyn)
            if axis is None:
                return counts, distances, ids
            all_counts = jax.lax.all_gather(counts, axis, axis=1)           # (nq, S)
            all_d = jax.lax.all_gather(distances, axis, axis=1, tiled=True)  # (nq, S*cap)
            all_i = jax.lax.all_gather(ids, axis, axis=1, tiled=True)
            slot = jnp.arange(all_d.shape[1]) % capacity
            shard_of = jnp.arange(all_d.shape[1]) // capacity
            used = slot[None, :] < jnp.take(all_counts, shard_of, axis=1)
            order = jnp.argsort(~used, axis=1, stable=True)[:, :capacity]  # matches first
            return (jnp.sum(all_counts, axis=1), jnp.take_along_axis(all_d, order, 1),
                    jnp.take_along_axis(all_i, order, 1))

        counts, distances, ids = self._map(
            fn, (self._pad_queries(xq), radius, selector, dynamic),
            (qspec, P(), P(), P()), (qspec, qspec, qspec))
        return counts[:nq], distances[:nq], ids[:nq]

    # --- add / remove / reconstruct ---------------------------------------------------
    def add_core(self, x, n_valid, ids, valid_rows, lists=None):
        """Append x[:n_valid]: all or nothing over the shards, least-filled shards first."""
        axis, nshards, id_mode = self.shard_axis, self.nshards, self.id_mode
        n = x.shape[0]

        def fn(local, x, n_valid, ids, valid_rows, lists):
            stored = local.ids.dtype
            if axis is None:
                counts, me = local.count[None], 0
            else:
                counts, me = jax.lax.all_gather(local.count, axis), jax.lax.axis_index(axis)
            total = jnp.sum(counts)
            if ids is None and axis is not None:  # global sequential numbering
                ids = total.astype(stored) + jnp.arange(n, dtype=stored)
            status = _id_range_status(ids, stored, total, n_valid, id_mode)
            if axis is not None:
                # Every shard checks the whole batch (finite rows, IDMap2 duplicates against
                # its own ids); capacity is checked over all shards, as the fill allows.
                checks = _storage.append_status(local, n_valid, ids, valid_rows)
                status |= checks & ~_storage.OVERFLOW
                status |= jnp.where(total + n_valid > nshards * local.capacity,
                                    _storage.OVERFLOW, 0)
                status = _or_reduce(jax.lax.all_gather(status, axis))
            quotas = _water_fill(counts, n_valid)
            start = jnp.cumsum(quotas)[me] - quotas[me]
            rows = start + jnp.arange(n)

            def mine(a, fill):
                return None if a is None else jnp.take(a, rows, axis=0, mode="fill",
                                                        fill_value=fill)

            extra = {} if lists is None else {"lists": mine(lists, 0)}
            new = local.add_core(mine(x, 0), jnp.where(status == 0, quotas[me], 0),
                                 mine(ids, -1), mine(valid_rows, True), **extra)
            return self._wrap(new.with_status(status))

        new = self._map(fn, (x, jnp.asarray(n_valid, jnp.int32), ids, valid_rows, lists),
                        (P(),) * 5, self.spec)
        return dataclasses.replace(self, index=new)

    def remove_core(self, selector):
        axis, nshards = self.shard_axis, self.nshards
        # Flat renumbers sequential ids after a removal (FAISS IndexFlat); IVF keeps them.
        renumber = (self.sharded and self.id_mode == "sequential"
                    and isinstance(self.per_shard, FlatIndex))

        def fn(local, sel):
            new, removed = local.remove_core(sel)
            if axis is None:
                return new, removed
            removed = jax.lax.psum(removed, axis)
            if renumber:
                # As the unsharded index: the survivors keep their order and are numbered
                # 0..n-1, i.e. each id drops by the number of removed ids below it. Ids
                # are exactly 0..total-1, so every device can count that itself (over
                # all ids: 4 bytes per vector of the whole index, for the moment).
                total = jax.lax.psum(local.count, axis)
                every = jnp.arange(nshards * local.capacity, dtype=local.ids.dtype)
                gone = sel(every) & (every < total)
                below = jnp.cumsum(gone, dtype=local.ids.dtype) - gone
                live = new.live()
                shift = below[jnp.clip(new.ids, 0, every.shape[0] - 1)]
                # A monotone renumbering keeps a Flat shard's id order (its direct map).
                new = dataclasses.replace(new, ids=jnp.where(live, new.ids - shift, new.ids))
            return _restack(new), removed

        new, removed = self._map(fn, (selector,), (P(),), (self.spec, P()))
        return dataclasses.replace(self, index=new), removed

    def reconstruct_core(self, ids):
        axis = self.shard_axis

        def fn(local, ids):
            vectors, found = local.reconstruct_core(ids)
            if axis is None:
                return vectors, found
            everywhere = jax.lax.all_gather(found, axis)                 # (S, m)
            owner = jnp.argmax(everywhere, axis=0)                       # first holder
            mine = found & (owner == jax.lax.axis_index(axis))
            vectors = jax.lax.psum(jnp.where(mine[:, None], vectors, 0.0), axis)
            found = jnp.any(everywhere, axis=0)
            return jnp.where(found[:, None], vectors, jnp.nan), found

        return self._map(fn, (ids,), (P(),), (P(), P()))

    # --- training ------------------------------------------------------------------
    def train(self, x, *, key=None, **kwargs):
        """Train the index on the mesh, as the unplaced index would be trained.

        Replicated (any index type): the index's own training, on x gathered to the host,
        placed back on every device. Sharded IVF: the coarse k-means runs with
        `kmeans_sharded` on x split over the shard axis (the rows stay on their
        devices); the codec is trained on at most `CODEC_SAMPLE` evenly spaced rows.
        (`jann.shard` takes graphs trained only, and Flat needs no training.)"""
        if not self.sharded:
            trainer = getattr(self.index, "train", None)
            if trainer is None:
                return self
            return dataclasses.replace(self, index=_place(
                trainer(_host_rows(x), key=key, **kwargs), self.mesh, P()))
        if not isinstance(self.per_shard, IVFIndex):
            return self
        return self._train_sharded_ivf(x, key=key, **kwargs)

    def _train_sharded_ivf(self, x, *, key=None, niter: int = 10, verbose: bool = False,
                           max_points_per_centroid: int = 256):
        template = _first_local_shard(self.index)
        key = jax.random.key(0) if key is None else key
        key_coarse, key_codec = jax.random.split(key)  # the split IVFIndex.train makes
        rows, n = _rows_over_axis(x, self.mesh, self.shard_axis)
        if template.metric == "cosine":
            rows = jax.jit(dist_ops.normalize_L2)(rows)
        if template.nlist == 1:
            centroids = jnp.zeros((1, template.d), jnp.float32)
        else:
            centroids = kmeans_sharded(
                rows, template.nlist, self.mesh, axis=self.shard_axis, key=key_coarse,
                niter=niter, verbose=verbose, n_valid=n,
                max_points_per_centroid=max_points_per_centroid).centroids
        # The coarse quantizer exactly as IVFIndex.train builds it.
        trained = template.with_centroids(jnp.asarray(jax.device_get(centroids)))
        sample = jnp.asarray(_sample_rows(rows, n, CODEC_SAMPLE, self.mesh, self.shard_axis))
        if template.by_residual:
            sample = sample - trained.centroids[trained.assign(sample)]
        trained = dataclasses.replace(trained, codec=template.codec.train(sample, key=key_codec),
                                      is_trained=True)
        stacked = jax.tree.map(lambda a: jnp.broadcast_to(a, (self.nshards, *a.shape)), trained)
        return dataclasses.replace(self, index=_place(stacked, self.mesh, self.spec))


# ------------------------------------------------------------------------- merging
def merge_results(distances, ids, axis_name, k: int | None = None, *, similarity=False):
    """Inside shard_map: merge every device's (nq, k) results over `axis_name` into the
    global top-k (one all-gather of the candidates, then a top-k of S * k per query).

    Ties go to the smaller id (the order of an unsharded index with sequential ids);
    missing results (id -1) come last, as +inf (-inf for similarities) and -1.
    """
    k = distances.shape[-1] if k is None else k
    all_d = jax.lax.all_gather(distances, axis_name, axis=1, tiled=True)
    all_i = jax.lax.all_gather(ids, axis_name, axis=1, tiled=True)
    return _merge_rows(all_d, all_i, k, similarity)


def _merge_rows(distances, ids, k, similarity):
    missing = ids < 0
    keyed = jnp.where(missing, jnp.inf, -distances if similarity else distances)
    top_id = jnp.iinfo(ids.dtype).max
    keyed, id_key = jax.lax.sort((keyed, jnp.where(missing, top_id, ids)), dimension=1,
                                 num_keys=2)
    keyed, id_key = keyed[:, :k], id_key[:, :k]
    return (-keyed if similarity else keyed), jnp.where(id_key == top_id, -1, id_key)


def search_shard(block, xq, k: int, *, axis_name: str, selector=None, **params):
    """Search from inside your own `shard_map`: `block` is this device's part of a
    sharded index's `.index` (pass `sharded.spec` as its in_spec), xq the queries this
    device answers; returns the global (nq, k) top-k on every device of `axis_name`."""
    from jann.api import search  # late: jann.api does not import sharding
    local = _local(block)
    distances, ids = search(local, xq, k, selector=selector, **params)
    return merge_results(distances, ids, axis_name, k,
                         similarity=dist_ops.is_similarity(local.metric))


def _water_fill(counts, n):
    """Rows each shard receives when n rows go, one by one, to the least-filled shard
    (ties to the lower shard): fill all shards up to a level L, the rest one each."""
    counts = counts.astype(jnp.int32)
    n = jnp.asarray(n, jnp.int32)

    def need(level):
        return jnp.sum(jnp.maximum(level - counts, 0))

    def bisect(_, bounds):
        lo, hi = bounds
        mid = (lo + hi) // 2
        ok = need(mid) >= n
        return jnp.where(ok, lo, mid + 1), jnp.where(ok, mid, hi)

    level, _ = jax.lax.fori_loop(0, 32, bisect, (jnp.min(counts), jnp.max(counts) + n))
    base = jnp.maximum(level - 1 - counts, 0)
    at_level = counts <= level - 1
    extra = at_level & (jnp.cumsum(at_level) <= n - jnp.sum(base))
    return base + extra.astype(jnp.int32)


def _id_range_status(ids, stored, total, n_valid, id_mode):
    """ID_RANGE when the new ids do not fit the stored id dtype (int32 ids under x64)."""
    top = jnp.iinfo(stored).max
    if ids is None or id_mode == "sequential":
        return jnp.where(total > top - n_valid, _storage.ID_RANGE, 0)
    if jnp.iinfo(ids.dtype).max <= top:
        return jnp.int32(0)
    rows = jnp.arange(ids.shape[0]) < n_valid
    return jnp.where(jnp.any(rows & (ids >= top)), _storage.ID_RANGE, 0)


# ------------------------------------------------------------- splitting into shards
def _rows(index):
    """(row arrays (.., ids at position 2), list of each row or None) of a shard."""
    if isinstance(index, FlatIndex):
        return (index.vectors, index.sqnorms, index.ids), None
    return (index.payload, index.norms, index.ids), index.row_lists()


def _with_rows(template, rows, lists, count, capacity):
    """`template` (configuration, quantizer, codec) holding `rows` (the first `count`
    live) instead of its own."""
    if isinstance(template, FlatIndex):
        vectors, sqnorms, ids = rows
        index = dataclasses.replace(template, vectors=vectors, sqnorms=sqnorms, ids=ids,
                                    count=count, status=jnp.zeros((), jnp.int32),
                                    id_order=jnp.arange(capacity, dtype=jnp.int32))
        return index.grown(capacity)  # recomputes the direct map for these rows
    payload, norms, ids = rows
    sizes = jnp.bincount(lists, length=template.nlist + 1)[: template.nlist]
    offsets = jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.cumsum(sizes, dtype=jnp.int32)])
    return dataclasses.replace(template, payload=payload, norms=norms, ids=ids,
                               offsets=offsets, count=count,
                               status=jnp.zeros((), jnp.int32))


def _split(stack, parts: int, part, capacity: int):
    """Piece `part` of `parts` of the live rows of G stacked shards (leading axis G) as
    one shard of `capacity` rows: rows ordered by (list, id), then dealt round-robin, so
    each piece holds an even share of every inverted list and ids stay in order."""
    template = _local(stack)
    rows, lists = jax.vmap(_rows)(stack)
    groups, per = rows[0].shape[:2]
    total = groups * per
    if total == 0:
        return dataclasses.replace(template.grown(capacity), status=jnp.zeros((), jnp.int32))
    flat = [r.reshape((total,) + r.shape[2:]) for r in rows]
    live = (jnp.arange(per)[None, :] < stack.count[:, None]).reshape(total)
    ids = flat[2]
    order = jnp.argsort(jnp.where(live, ids, jnp.iinfo(ids.dtype).max), stable=True)
    if lists is not None:
        lists = jnp.where(live, lists.reshape(total), template.nlist)
        order = order[jnp.argsort(lists[order], stable=True)]
    pos = part + jnp.arange(capacity) * parts
    valid = pos < jnp.sum(live)
    src = order[jnp.minimum(pos, total - 1)]
    fills = (0, 0, -1)
    new_rows = tuple(
        jnp.where(valid.reshape((-1,) + (1,) * (r.ndim - 1)), r[src], jnp.asarray(f, r.dtype))
        for r, f in zip(flat, fills))
    new_lists = None if lists is None else jnp.where(valid, lists[src], template.nlist)
    return _with_rows(template, new_rows, new_lists, jnp.sum(valid, dtype=jnp.int32), capacity)


@functools.partial(jax.jit, static_argnames=("parts", "capacity", "one"))
def _split_all(stack, parts: int, capacity: int, one: bool = False):
    """All `parts` pieces, stacked; `one`: stack is a single index (stacked here, in the
    compiled program, so that no copy of it is made)."""
    stack = _restack(stack) if one else stack
    return jax.vmap(lambda part: _split(stack, parts, part, capacity))(jnp.arange(parts))


def _with_id_mode(index, id_mode: str):
    if isinstance(index, FlatIndex):
        return dataclasses.replace(index, id_mode=id_mode).grown(index.capacity)
    return dataclasses.replace(index, id_mode=id_mode)


# ------------------------------------------------------------------ graph shards
# A graph cannot be cut by rows: its edges name rows. Each shard is its own sub-graph,
# built (on the host, `graph.build`) over every S-th of the rows in id order; a query
# searches every sub-graph and the per-shard results are merged (each sub-graph holds
# 1/S of the rows, so ef per shard buys more recall than on the whole graph).
def _rows_by_id(graphs):
    """(vectors, ids) of the live rows of `graphs`, in id order, on the host."""
    rows = [graph_lib.live_rows(g) for g in graphs]
    vectors = np.concatenate([v for v, _ in rows])
    ids = np.concatenate([i for _, i in rows])
    order = np.argsort(ids, kind="stable")
    return vectors[order], ids[order]


def _sub_graph_stack(template: GraphIndex, vectors, ids, nshards: int):
    """Stacked sub-graphs (ids stored as given: "idmap" shards) over every nshards-th of
    the rows (vectors, ids), with template's configuration."""
    if ids.size and ids.size // nshards <= template.graph_degree:
        raise InvalidInputError(
            f"{ids.size} vectors over {nshards} shards leave fewer than graph_degree + 1 = "
            f"{template.graph_degree + 1} per shard to build a sub-graph from: use fewer "
            "devices, a lower degree, or shard the index once it holds more vectors")
    empty = graph_lib.emptied(template)
    shards = [graph_lib.build(empty, vectors[p::nshards], ids[p::nshards])
              if p < ids.size else empty for p in range(nshards)]
    capacity = _storage.fitted_capacity(max(_storage.host_int(g.count) for g in shards))
    return jax.tree.map(lambda *a: jnp.stack(a), *(g.grown(capacity) for g in shards))


def _unstacked(stack):
    return [jax.tree.map(lambda a: a[s], stack) for s in range(stack.count.shape[0])]


def _merge_graph_stack(stack, id_mode: str):
    """One graph over the live rows of every sub-graph (rebuilt, ids kept)."""
    shards = _unstacked(stack)
    vectors, ids = _rows_by_id(shards)
    merged = graph_lib.emptied(shards[0])
    if ids.size:
        merged = graph_lib.build(merged, vectors, ids)
    if id_mode == "sequential":  # the next id: rows ever added over all shards
        merged = dataclasses.replace(merged, id_mode="sequential",
                                     n_added=jnp.sum(jnp.asarray(stack.n_added), dtype=jnp.int32))
    return merged


# ---------------------------------------------------------------------- placement
def _check_mesh(mesh, axis, what="axis"):
    if not isinstance(mesh, Mesh):
        raise InvalidInputError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    if axis is None:
        if len(mesh.axis_names) != 1:
            raise InvalidInputError(
                f"the mesh has axes {tuple(mesh.axis_names)}: say which one with {what}=")
        return mesh.axis_names[0]
    if not isinstance(axis, str) or axis not in mesh.axis_names:
        raise InvalidInputError(
            f"{what}={axis!r} is not an axis of the mesh; its axes are "
            f"{tuple(mesh.axis_names)}")
    return axis


def _all_local(mesh) -> bool:
    return not mesh.is_multi_process


def _place(tree, mesh, spec):
    """Put a host-side pytree on the mesh. With several processes every process passes
    the same values and contributes the parts its own devices hold."""
    sharding = NamedSharding(mesh, spec)
    if _all_local(mesh):
        return jax.device_put(tree, sharding)

    def put(a):
        host = np.asarray(a)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    return jax.tree.map(put, tree)


def _convert(index, dtype, ids):
    """The placement options: storage dtype (Flat) and id width."""
    if dtype is not None:
        if dtype not in STORAGE_DTYPES:
            raise InvalidInputError(f"dtype must be one of {sorted(STORAGE_DTYPES)}, "
                                    f"got {dtype!r}")
        if not isinstance(index, FlatIndex):
            raise InvalidInputError(
                "dtype= converts the storage of Flat indexes; an IVF index stores codes "
                "(use an SQfp16 / SQbf16 codec for half-precision lists)")
        vectors = index.vectors.astype(STORAGE_DTYPES[dtype])
        index = dataclasses.replace(index, vectors=vectors,
                                    sqnorms=dist_ops.squared_norms(vectors))
    if ids is not None:
        if ids not in ("int32", "int64"):
            raise InvalidInputError(f"ids must be 'int32' or 'int64', got {ids!r}")
        if ids == "int64" and not jax.config.jax_enable_x64:
            raise InvalidInputError("int64 ids need jax.config.update('jax_enable_x64', True)")
        if not isinstance(index, (FlatIndex, IVFIndex)):
            raise InvalidInputError(f"ids= applies to Flat and IVF indexes, got "
                                    f"{index.describe()}")
        n = _storage.host_int(index.count)
        live = np.asarray(index.ids[:n])
        if ids == "int32" and n and live.max() >= np.iinfo(np.int32).max:
            raise InvalidInputError("the index holds ids that do not fit int32")
        index = dataclasses.replace(index, ids=index.ids.astype(ids))
    return index


def shard(index, mesh: Mesh, axis: str | None = None, *, query_axis: str | None = None,
          dtype: str | None = None, ids: str | None = None) -> ShardedIndex:
    """Split the database of a Flat or IVF index over the devices of mesh axis `axis`
    (FAISS `IndexShards`; `index_cpu_to_all_gpus(shard=True)`).

    Each device holds about ntotal / S vectors (IVF: of every list) and, for IVF, a copy
    of the quantizer and codec. `query_axis` (another mesh axis) also splits the queries
    over it, for a 2-D mesh of shards x replicas. `dtype` / `ids` are the placement
    options (module docstring). An untrained IVF index may be sharded, then trained on
    data sharded over the same axis (`jann.train`). Every process of a multi-host job
    passes the same index (e.g. an empty or trained one) and adds its own data after.
    """
    if isinstance(index, ShardedIndex):
        raise InvalidInputError("the index is already placed on a mesh; jann.unshard it "
                                "first, or save it and jann.load(path, mesh=...)")
    axis = _check_mesh(mesh, axis)
    if query_axis is not None:
        query_axis = _check_mesh(mesh, query_axis, "query_axis")
        if query_axis == axis:
            raise InvalidInputError("query_axis must differ from the shard axis")
    if not isinstance(index, (FlatIndex, IVFIndex, GraphIndex)):
        raise InvalidInputError(
            f"jann.shard splits Flat, IVF-family and graph indexes, got "
            f"{type(index).__name__} ({index.describe()}); jann.replicate places any index")
    index = _convert(index, dtype, ids)
    nshards = mesh.shape[axis]
    if isinstance(index, GraphIndex):
        if not index.is_trained:
            raise InvalidInputError(f"train the {index.describe()} index before sharding it")
        stacked = _sub_graph_stack(index, *_rows_by_id([index]), nshards)
        return ShardedIndex(_place(stacked, mesh, P(axis)), mesh, axis, query_axis,
                            index.id_mode)
    id_mode = index.id_mode
    if id_mode == "sequential":
        index = _with_id_mode(index, "idmap")  # shards store the global ids
    n = _storage.host_int(index.count)
    stacked = _split_all(index, nshards, _storage.fitted_capacity(-(-n // nshards)), one=True)
    return ShardedIndex(_place(stacked, mesh, P(axis)), mesh, axis, query_axis, id_mode)


_shard = shard  # `to_devices(shard=...)` shadows the name


def replicate(index, mesh: Mesh, axis: str | None = None, *, dtype: str | None = None,
              ids: str | None = None) -> ShardedIndex:
    """A copy of the index on every device of the mesh; queries are split over mesh axis
    `axis` (FAISS `IndexReplicas`; `index_cpu_to_all_gpus(shard=False)`). Any index
    type. `dtype` / `ids` are the placement options (module docstring)."""
    if isinstance(index, ShardedIndex):
        raise InvalidInputError("the index is already placed on a mesh; jann.unshard it first")
    axis = _check_mesh(mesh, axis)
    index = _convert(index, dtype, ids)
    return ShardedIndex(_place(index, mesh, P()), mesh, None, axis, index.id_mode)


def to_devices(index, devices=None, *, shard: bool = False, dtype: str | None = None,
               ids: str | None = None) -> ShardedIndex:
    """`index_cpu_to_gpu` / `index_cpu_to_all_gpus` / `index_cpu_to_gpus_list`: place the
    index on `devices` (default: all of `jax.devices()`), split (shard=True) or copied
    (shard=False), over a 1-D mesh with axis "devices"."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices or not all(isinstance(d, jax.Device) for d in devices):
        raise InvalidInputError("devices must be a non-empty list of jax devices")
    if len({d.id for d in devices}) != len(devices):
        raise InvalidInputError("devices lists a device twice")
    mesh = Mesh(np.array(devices), ("devices",))
    place = _shard if shard else replicate
    return place(index, mesh, "devices", dtype=dtype, ids=ids)


def unshard(index: ShardedIndex, device=None):
    """The plain index back on one device (default: the first local one), with all the
    vectors (FAISS `index_gpu_to_cpu`). Needs every shard on this process."""
    if not isinstance(index, ShardedIndex):
        raise InvalidInputError(f"unshard takes a sharded index, got {type(index).__name__}")
    if not _all_local(index.mesh):
        raise InvalidInputError(
            "unshard gathers every shard on this process, but the mesh spans several "
            "processes; jann.save the index and jann.load(path) it on one host instead")
    device = jax.local_devices()[0] if device is None else device
    # A SingleDeviceSharding, not a bare device: the latter keeps an Explicit mesh type.
    inner = jax.device_put(index.index, jax.sharding.SingleDeviceSharding(device))
    return merge_stack(inner, index.id_mode) if index.sharded else inner


def merge_stack(stack, id_mode: str):
    """One index holding all the rows of a stack of shards (ids in order)."""
    if isinstance(stack, GraphIndex):
        return _merge_graph_stack(stack, id_mode)
    n = int(np.asarray(stack.count).sum())
    merged = _local(_split_all(stack, 1, _storage.fitted_capacity(n)))
    return _with_id_mode(merged, id_mode) if id_mode == "sequential" else merged


# --------------------------------------------------------------- memory and layout
def device_bytes(index) -> dict:
    """Bytes each device holds of the index ({device: bytes}, addressable ones)."""
    out = {}
    for leaf in jax.tree.leaves(index):
        for s in leaf.addressable_shards:
            out[s.device] = out.get(s.device, 0) + s.data.nbytes
    return out


# -------------------------------------------------------------------- training
def _host_rows(x):
    return x if isinstance(x, np.ndarray) else jax.device_get(x)


def _rows_over_axis(x, mesh, axis):
    """x (n, d) as a (S * m, d) float32 array split by rows over `axis` (zero rows padded
    at the end), and n. A jax array already laid out that way is used as it is."""
    nshards = mesh.shape[axis]
    sharding = NamedSharding(mesh, P(axis))
    x = as_vectors(x, None, "training vectors")
    n = x.shape[0]
    pad = -n % nshards
    if isinstance(x, jax.Array) and not pad and x.dtype == jnp.float32 and \
            x.sharding.is_equivalent_to(sharding, 2):
        return x, n
    if isinstance(x, np.ndarray) and _all_local(mesh):
        host = np.zeros((n + pad, x.shape[1]), np.float32)
        host[:n] = x
        return jax.device_put(host, sharding), n
    padded = jax.jit(lambda a: jnp.pad(a.astype(jnp.float32), ((0, pad), (0, 0))),
                     out_shardings=sharding)(x)
    return padded, n


def _sample_rows(rows, n: int, size: int, mesh, axis):
    """At most `size` evenly spaced rows among the first n of rows split over `axis`
    (to the host): each device picks its own, only the sample travels."""
    step = max(1, -(-n // size))
    per = rows.shape[0] // mesh.shape[axis]
    take = -(-per // step) + 1

    def pick(x_local):
        me = jax.lax.axis_index(axis)
        local = (-me * per) % step + step * jnp.arange(take)
        valid = (local < per) & (me * per + local < n)
        picked = x_local[jnp.minimum(local, per - 1)]
        return (jax.lax.all_gather(picked, axis, tiled=True),
                jax.lax.all_gather(valid, axis, tiled=True))

    picked, valid = jax.jit(_smap(pick, mesh, (P(axis),), (P(), P())))(rows)
    return np.asarray(picked)[np.asarray(valid)]


def _first_local_shard(stack):
    """A shard this process holds, on the host (for its configuration, quantizer and
    codec, which all shards share)."""
    return jax.tree.map(lambda a: jnp.asarray(np.asarray(a.addressable_shards[0].data)[0]),
                        stack)


def kmeans_sharded(x, k: int, mesh: Mesh, *, axis: str | None = None, key, niter: int = 25,
                   spherical: bool = False, max_points_per_centroid: int = 256,
                   min_points_per_centroid: int = 39, verbose: bool = False,
                   n_valid: int | None = None) -> KMeansResult:
    """k-means over training vectors split by rows over mesh axis `axis`: each device
    assigns its own rows; per-cluster sums and counts are `psum`-reduced, so the vectors
    are never gathered (only the k initial centroids are).

    The same algorithm and key schedule as `jann.kmeans` (random init among the points,
    FAISS's empty-cluster split): without subsampling it computes the same centroids up
    to float rounding of the sums. Above `max_points_per_centroid * k` points each device
    keeps an equal random share of its rows. `n_valid`: only the first n_valid rows of x
    are points (x padded to the device count). One restart (no nredo).
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise InvalidInputError(f"k must be a positive int, got {k!r}")
    if key is None:
        raise InvalidInputError("kmeans_sharded needs an explicit key=jax.random.key(...)")
    if niter < 0:
        raise InvalidInputError(f"need niter >= 0, got {niter}")
    axis = _check_mesh(mesh, axis)
    x, n = _rows_over_axis(x, mesh, axis)
    n = n if n_valid is None else n_valid
    check_finite(x, "training vectors")
    check_training_points(n, k, "k-means", min_points_per_centroid)
    nshards, rows = mesh.shape[axis], x.shape[0] // mesh.shape[axis]
    valid_per_shard = np.clip(n - np.arange(nshards) * rows, 0, rows)
    keep = min(rows, -(-k * max_points_per_centroid // nshards))
    key_sample, key = jax.random.split(key)
    subsample = n > k * max_points_per_centroid
    points = int(np.minimum(valid_per_shard, keep).sum()) if subsample else n
    key, key_init, key_iter = jax.random.split(key, 3)
    wanted = jax.random.permutation(key_init, points)[:k]
    row_spec = P(axis)

    def prepare(x_local, wanted):
        me = jax.lax.axis_index(axis)
        valid = me * rows + jnp.arange(rows) < n
        if subsample:  # an equal random share of every device's rows
            score = jax.random.uniform(jax.random.fold_in(key_sample, me), (rows,))
            pick = jnp.sort(jnp.argsort(jnp.where(valid, score, 2.0))[:keep])
            x_local, valid = x_local[pick], valid[pick]
        if spherical:
            x_local = dist_ops.normalize_L2(x_local)
        # The k initial centroids: the points ranked `wanted` among all valid points.
        before = jnp.sum(jnp.where(jnp.arange(nshards) < me,
                                   jax.lax.all_gather(jnp.sum(valid), axis), 0))
        rank = before + jnp.cumsum(valid) - 1
        hit = valid[None, :] & (rank[None, :] == wanted[:, None])          # (k, rows)
        init = jax.lax.psum(jnp.dot(hit.astype(jnp.float32), x_local,
                                    precision=jax.lax.Precision.HIGHEST), axis)
        return x_local, valid, init

    x, valid, centroids = jax.jit(_smap(prepare, mesh, (row_spec, P()),
                                        (row_spec, row_spec, P())))(x, wanted)

    def lloyd(x_local, valid, centroids, key):
        dist, labels = kmeans_assign(x_local, centroids, spherical)
        labels = jnp.where(valid, labels, k)  # padding rows fall out of every cluster
        sums = jax.lax.psum(jax.ops.segment_sum(x_local, labels, num_segments=k), axis)
        counts = jax.lax.psum(jax.ops.segment_sum(jnp.ones_like(labels), labels,
                                                  num_segments=k), axis)
        objective = jax.lax.psum(jnp.sum(jnp.where(valid, dist, 0.0)), axis)
        new = update_centroids(centroids, sums, counts, key, spherical)
        return new, objective, jnp.sum(counts == 0)

    step = jax.jit(_smap(lloyd, mesh, (row_spec, row_spec, P(), P()), (P(), P(), P())))
    history = []
    for it in range(niter):
        key_iter, sub = jax.random.split(key_iter)
        centroids, objective, n_empty = step(x, valid, centroids, sub)
        history.append(float(objective))
        if verbose:
            print(f"  sharded k-means iter {it + 1}/{niter}: objective {history[-1]:.6g}, "
                  f"{int(n_empty)} empty clusters split", flush=True)
    return KMeansResult(centroids, history)


# ------------------------------------------------------------------ checkpoints
def placement(index: ShardedIndex) -> dict:
    """The JSON description of where a sharded index lives (for checkpoints)."""
    return {"mode": "shard" if index.sharded else "replicate",
            "nshards": index.nshards, "axis": index.shard_axis or index.query_axis,
            "query_axis": index.query_axis, "id_mode": index.id_mode,
            "counts": [int(c) for c in index.shard_counts()] if index.sharded else None}


def restore_layout(info: dict, mesh: Mesh, axis: str | None):
    """How to restore a sharded checkpoint (its placement `info`) onto `mesh`: (the
    sharding to read every stacked array with, finish(stack) -> ShardedIndex). See the
    module docstring for the redistribution."""
    saved = int(info["nshards"])
    axis = _check_mesh(mesh, axis if axis is not None else (
        info["axis"] if info["axis"] in mesh.axis_names else None))
    query_axis = info.get("query_axis")
    if query_axis is not None and (query_axis not in mesh.axis_names or query_axis == axis):
        query_axis = None
    new = mesh.shape[axis]
    groups = math.gcd(saved, new)
    names = list(mesh.axis_names)
    devices = np.moveaxis(mesh.devices, names.index(axis), 0)
    others = [a for a in names if a != axis]
    grid = Mesh(devices.reshape((groups, new // groups) + devices.shape[1:]),
                ("_group", "_member", *others))
    read = NamedSharding(grid, P("_group"))
    counts = np.asarray(info["counts"], np.int64).reshape(groups, saved // groups).sum(axis=1)
    capacity = _storage.fitted_capacity(int(-(-counts.max() // (new // groups))))
    members = new // groups

    def finish(stack):
        if isinstance(stack, GraphIndex) and new != saved:
            return _regraph(stack, info, mesh, axis, query_axis)
        if isinstance(stack, GraphIndex):  # one saved sub-graph per device, as saved
            target = NamedSharding(mesh, P(axis))
            placed = jax.tree.map(lambda a: jax.make_array_from_single_device_arrays(
                a.shape, target, [s.data for s in a.addressable_shards]), stack)
            return ShardedIndex(placed, mesh, axis, query_axis, info["id_mode"])

        def deal(block):
            part = jax.lax.axis_index("_member")
            return _restack(_split(block, members, part, capacity))

        dealt = jax.jit(_smap(deal, grid, (P("_group"),), P(("_group", "_member"))))(stack)
        target = NamedSharding(mesh, P(axis))
        placed = jax.tree.map(lambda a: jax.make_array_from_single_device_arrays(
            a.shape, target, [s.data for s in a.addressable_shards]), dealt)
        return ShardedIndex(placed, mesh, axis, query_axis, info["id_mode"])

    return read, finish


def _regraph(stack, info, mesh, axis, query_axis):
    """Sub-graphs saved over S devices as sub-graphs for this mesh's axis: rebuilt on
    the host from their rows (the only way to move graph rows between shards)."""
    if not _all_local(mesh):
        raise InvalidInputError(
            f"a graph index saved over {info['nshards']} devices is restored onto "
            f"{mesh.shape[axis]} by rebuilding its sub-graphs on one host, but the mesh "
            "spans several processes: restore onto the saved device count, or load it "
            "without a mesh and jann.shard it")
    shards = _unstacked(jax.device_get(stack))
    stacked = _sub_graph_stack(shards[0], *_rows_by_id(shards), mesh.shape[axis])
    return ShardedIndex(_place(stacked, mesh, P(axis)), mesh, axis, query_axis,
                        info["id_mode"])


def is_sharded(index) -> bool:
    return isinstance(index, ShardedIndex)
