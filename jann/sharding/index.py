"""`ShardedIndex`: an index placed on a device mesh (shard mode: a stack of per-shard
indexes split over a mesh axis; replicate mode: one index copied to every device), and
its search / add / remove / reconstruct / train, each run under `shard_map`."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jann import _storage
from jann._inputs import delegated_search_params, split_search_params
from jann._pytree import pytree_dataclass, static
from jann.flat import FlatIndex
from jann.index import Index
from jann.ivf import IVFIndex
from jann.ops import distances as dist_ops
from jann.ops.sorting import prefix_sum
from jann.sharding.kmeans import kmeans_sharded, rows_over_axis, sample_rows
from jann.sharding.layout import water_fill
from jann.sharding.merge import merge_results
from jann.sharding.mesh import constrain, local_shard, place_on_mesh, restack, smap


# Rows the codec of a sharded IVF index is trained on (FAISS trains PQ8 on 256 * 256).
CODEC_SAMPLE = 65536


def _or_reduce(bits, axis=0):
    # Bit by bit with max: the SPMD partitioner has no OR reduction (status words use
    # the low bits of _storage's flags).
    return functools.reduce(jnp.bitwise_or,
                            [jnp.max(bits & (1 << b), axis=axis) for b in range(8)])


@pytree_dataclass
class ShardedIndex(Index):
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
    mesh: Mesh = static()
    shard_axis: str | None = static(None)
    query_axis: str | None = static(None)
    id_mode: str = static("sequential", choices=_storage.ID_MODES)

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
    def inner(self):
        """The index each device holds (its structure only, in shard mode)."""
        return self.per_shard

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
        if not self.sharded:
            return self.index.ntotal_live()
        axis = self.shard_axis
        return self._map(lambda local: jax.lax.psum(local.ntotal_live(), axis), (), (), P())

    def next_id(self):
        if not self.sharded:
            return self.index.next_id()
        axis = self.shard_axis
        return self._map(lambda local: jax.lax.psum(local.next_id(), axis), (), (), P())

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
            return fn(local_shard(block) if sharded else block, *local_args)

        specs = (self.spec, *arg_specs)
        args = tuple(constrain(a, self.mesh, spec) for a, spec in zip((self.index, *args), specs))
        return smap(body, self.mesh, specs, out_specs)(*args)

    def _wrap(self, local):
        return restack(local) if self.sharded else local

    def with_status(self, bits):
        return dataclasses.replace(self, index=self.index.with_status(bits))

    def with_status_cleared(self):
        return dataclasses.replace(self, index=self.index.with_status_cleared())

    def search_parameter_space(self) -> dict[str, tuple]:
        return self.per_shard.search_parameter_space()

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
            # The next sequential id: shards number globally, each counting the rows it
            # was given (Flat: its rows, as it renumbers; the others: rows ever added).
            first = local.next_id() if axis is None else jax.lax.psum(local.next_id(), axis)
            if ids is None and axis is not None:  # global sequential numbering
                ids = first.astype(stored) + jnp.arange(n, dtype=stored)
            status = _id_range_status(ids, stored, first, n_valid, id_mode)
            if axis is not None:
                # Every shard checks the whole batch (finite rows, IDMap2 duplicates against
                # its own ids); capacity is checked over all shards, as the fill allows.
                checks = _storage.append_status(local, n_valid, ids, valid_rows)
                status |= checks & ~_storage.OVERFLOW
                status |= jnp.where(total + n_valid > nshards * local.capacity,
                                    _storage.OVERFLOW, 0)
                status = _or_reduce(jax.lax.all_gather(status, axis))
            quotas = water_fill(counts, n_valid)
            start = prefix_sum(quotas)[me] - quotas[me]
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
                below = prefix_sum(gone, dtype=local.ids.dtype) - gone
                live = new.live()
                shift = below[jnp.clip(new.ids, 0, every.shape[0] - 1)]
                # A monotone renumbering keeps a Flat shard's id order (its direct map).
                new = dataclasses.replace(new, ids=jnp.where(live, new.ids - shift, new.ids))
            return restack(new), removed

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
            return dataclasses.replace(self, index=place_on_mesh(
                self.index.train(_host_rows(x), key=key, **kwargs), self.mesh, P()))
        if not isinstance(self.per_shard, IVFIndex):
            return self
        return self._train_sharded_ivf(x, key=key, **kwargs)

    def _train_sharded_ivf(self, x, *, key=None, niter: int = 10, verbose: bool = False,
                           max_points_per_centroid: int = 256):
        template = _first_local_shard(self.index)
        key = jax.random.key(0) if key is None else key
        key_coarse, key_codec = jax.random.split(key)  # the split IVFIndex.train makes
        rows, n = rows_over_axis(x, self.mesh, self.shard_axis)
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
        sample = jnp.asarray(sample_rows(rows, n, CODEC_SAMPLE, self.mesh, self.shard_axis))
        if template.by_residual:
            sample = sample - trained.centroids[trained.assign(sample)]
        trained = dataclasses.replace(trained, codec=template.codec.train(sample, key=key_codec),
                                      is_trained=True)
        stacked = jax.tree.map(lambda a: jnp.broadcast_to(a, (self.nshards, *a.shape)), trained)
        return dataclasses.replace(self, index=place_on_mesh(stacked, self.mesh, self.spec))


def _id_range_status(ids, stored, total, n_valid, id_mode):
    """ID_RANGE when the new ids do not fit the stored id dtype (int32 ids under x64)."""
    top = jnp.iinfo(stored).max
    if ids is None or id_mode == "sequential":
        return jnp.where(total > top - n_valid, _storage.ID_RANGE, 0)
    if jnp.iinfo(ids.dtype).max <= top:
        return jnp.int32(0)
    rows = jnp.arange(ids.shape[0]) < n_valid
    return jnp.where(jnp.any(rows & (ids >= top)), _storage.ID_RANGE, 0)


def _host_rows(x):
    return x if isinstance(x, np.ndarray) else jax.device_get(x)


def _first_local_shard(stack):
    """A shard this process holds, on the host (for its configuration, quantizer and
    codec, which all shards share)."""
    return jax.tree.map(lambda a: jnp.asarray(np.asarray(a.addressable_shards[0].data)[0]),
                        stack)
