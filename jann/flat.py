"""Flat index: exact search over vectors stored as they are (FAISS `IndexFlat`, `IDMap`).

Storage is float32, float16 or bfloat16 (`dtype=`); distances always accumulate in
float32. Search streams the stored vectors in tiles (`jann.ops.knn_scan`, or its Pallas
kernel through `jann.ops.dispatch`), so memory stays bounded for any size. Ids:
`id_mode="sequential"` numbers vectors 0, 1, ... in insertion order and renumbers after a
removal (as `IndexFlat.remove_ids`); "idmap" stores the ids the user gives (duplicates
allowed, as `IndexIDMap`); "idmap2" also requires them unique
(as `IndexIDMap2`, whose reverse map needs that).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jann import _storage
from jann._pytree import pytree_dataclass, static
from jann.index import Index
from jann.quantizers.identity import STORAGE_DTYPES
from jann.ops import distances as dist_ops
from jann.ops.knn import knn_search
from jann.ops.range_search import range_scan


@pytree_dataclass
class FlatIndex(_storage.StatusWord, Index):
    """Exact-search index. Fields that are arrays are pytree leaves; the rest is static.

    vectors: (capacity, d) stored rows (L2-normalised when metric is cosine).
    sqnorms: (capacity,) float32 squared norms of the stored rows (used by l2).
    ids:     (capacity,) ids of the rows.
    count:   () int32 number of live rows (the first `count`).
    status:  () int32 bits explaining a refused traced write (see `jann.check`).
    id_order: (capacity,) rows sorted by id (IDMap modes: the direct map behind
             `reconstruct`; unused with sequential ids, where the id is the row).
    """

    vectors: jax.Array
    sqnorms: jax.Array
    ids: jax.Array
    count: jax.Array
    status: jax.Array
    id_order: jax.Array
    metric: str = static("l2", choices=dist_ops.METRICS)
    metric_arg: float = static(2.0)
    id_mode: str = static("sequential", choices=_storage.ID_MODES)

    skips_padded_adds = True  # padded rows are writes that are dropped

    # --- construction and shape -------------------------------------------------------
    @classmethod
    def create(cls, d: int, metric: str = "l2", *, metric_arg: float = 2.0,
              dtype: str = "float32", id_mode: str = "sequential", capacity: int = 0):
        return cls(
            vectors=jnp.zeros((capacity, d), STORAGE_DTYPES[dtype]),
            sqnorms=jnp.zeros((capacity,), jnp.float32),
            ids=_storage.empty_ids(capacity),
            count=jnp.zeros((), jnp.int32),
            status=jnp.zeros((), jnp.int32),
            id_order=jnp.arange(capacity, dtype=jnp.int32),
            metric=metric, metric_arg=float(metric_arg), id_mode=id_mode)

    @property
    def d(self) -> int:
        return self.vectors.shape[1]

    @property
    def capacity(self) -> int:
        return self.vectors.shape[0]

    @property
    def dtype(self) -> str:
        return jnp.dtype(self.vectors.dtype).name

    @property
    def is_trained(self) -> bool:
        return True

    def describe(self) -> str:
        base = "Flat" if self.dtype == "float32" else f"Flat({self.dtype})"
        return _storage.id_mode_prefix(self.id_mode) + base

    def grown(self, capacity: int) -> "FlatIndex":
        """A copy with room for `capacity` rows (host side; changes the static shapes)."""
        resized = dataclasses.replace(
            self,
            vectors=_storage.pad_rows(self.vectors, capacity),
            sqnorms=_storage.pad_rows(self.sqnorms, capacity),
            ids=_storage.pad_rows(self.ids, capacity, -1),
            id_order=jnp.arange(capacity, dtype=jnp.int32))
        return dataclasses.replace(resized, id_order=resized._order(resized.ids, self.count))

    def live(self) -> jax.Array:
        return _storage.live_mask(self.capacity, self.count)

    # --- pure cores (traceable; the public API validates and batches around them) -----
    def prepare(self, xq):
        return dist_ops.normalize_L2(xq) if self.metric == "cosine" else xq.astype(jnp.float32)

    def add_core(self, x, n_valid, ids, valid_rows):
        """Append x[:n_valid] (with ids, or sequential ids when ids is None)."""
        x = self.prepare(x)
        stored = x.astype(self.vectors.dtype)
        n = x.shape[0]
        if ids is None:
            ids = self.count + jnp.arange(n, dtype=self.ids.dtype)
        status = _storage.append_status(self, n_valid, ids, valid_rows)
        accept = status == 0
        vectors, sqnorms, stored_ids = _storage.append_rows(
            (self.vectors, self.sqnorms, self.ids), self.count,
            (stored, dist_ops.squared_norms(stored), ids), n_valid, accept)
        count = jnp.where(accept, self.count + n_valid, self.count).astype(jnp.int32)
        return dataclasses.replace(
            self, vectors=vectors, sqnorms=sqnorms, ids=stored_ids, count=count,
            status=self.status | status, id_order=self._order(stored_ids, count))

    def _order(self, ids, count):
        if self.id_mode == "sequential":
            return self.id_order
        return _storage.id_order(ids, _storage.live_mask(self.capacity, count))

    def allowed(self, selector):
        live = self.live()
        return live if selector is None else live & selector(self.ids)

    def _selected(self, selector):
        """Rows the selector allows among all `capacity` slots (None: all); searches pair
        it with n_rows=count, so empty slots are skipped whole tiles at a time."""
        return None if selector is None else selector(self.ids)

    def _row_ids(self, rows):
        if self.capacity == 0:
            return jnp.full(rows.shape, -1, self.ids.dtype)
        return jnp.where(rows >= 0, self.ids[jnp.maximum(rows, 0)], -1)

    def search_core(self, xq, k: int, selector=None, backend: str = "auto"):
        distances, rows = knn_search(
            self.prepare(xq), self.vectors, k, self.metric, self.metric_arg,
            xb_sqnorms=self.sqnorms, xb_valid=self._selected(selector), n_rows=self.count,
            backend=backend)
        return distances, self._row_ids(rows)

    def range_core(self, xq, radius, capacity: int, selector=None, backend: str = "auto"):
        """backend: range search has no kernel; XLA whatever it says."""
        counts, distances, rows = range_scan(
            self.prepare(xq), self.vectors, radius, capacity, self.metric,
            self.metric_arg, xb_sqnorms=self.sqnorms, xb_valid=self.allowed(selector))
        return counts, distances, self._row_ids(rows)

    def remove_core(self, selector):
        live = self.live()
        removed = live & selector(self.ids)
        (vectors, sqnorms, ids), count = _storage.compact_rows(
            (self.vectors, self.sqnorms, self.ids), live & ~removed)
        if self.id_mode == "sequential":
            ids = jnp.arange(self.capacity, dtype=self.ids.dtype)
        return dataclasses.replace(self, vectors=vectors, sqnorms=sqnorms, ids=ids, count=count,
                                   id_order=self._order(ids, count)), jnp.sum(removed, dtype=jnp.int32)

    def stored_rows(self, ids):
        """The stored rows (in their storage dtype) of the given ids, and which ids were
        found (rows of ids not found are arbitrary)."""
        if self.id_mode == "sequential":
            rows = ids.astype(jnp.int32)
            found = (ids >= 0) & (ids < self.count)
        else:
            rows, found = _storage.lookup_ids(self.ids, self.live(), ids.astype(self.ids.dtype),
                                              self.id_order)
        return self.vectors[jnp.clip(rows, 0, max(self.capacity - 1, 0))], found

    def reconstruct_n_core(self, i0, n: int):
        """Storage positions i0..i0+n-1: insertion order (FAISS's IndexFlat)."""
        vectors = jax.lax.dynamic_slice_in_dim(self.vectors, i0, n).astype(jnp.float32)
        return vectors, jnp.ones((n,), bool)

    def reconstruct_core(self, ids):
        """Stored vectors (float32) of the given ids, and which ids were found."""
        out, found = self.stored_rows(ids)
        return jnp.where(found[:, None], out.astype(jnp.float32), jnp.nan), found


