"""A toy index type written only against `jann.index.Index`, as a newcomer would add one:
exact L2 search by one matmul over float32 rows. Nothing in jann knows about it;
tests/test_index_interface.py checks that train, add, search, range search, removal,
reconstruction, checkpoints, placement on a mesh and `jann serve --import toy_index`
all work with it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jann import Index, pytree_dataclass, static


@pytree_dataclass
class ToyExact(Index):
    """Rows in a (capacity, d) buffer, the first `count` live; ids are row numbers."""

    vectors: jax.Array
    count: jax.Array
    status: jax.Array
    metric: str = static("l2")
    id_mode: str = static("sequential")

    @classmethod
    def create(cls, d: int):
        return cls(vectors=jnp.zeros((0, d), jnp.float32), count=jnp.zeros((), jnp.int32),
                   status=jnp.zeros((), jnp.int32))

    # --- shape and configuration --------------------------------------------------
    @property
    def d(self) -> int:
        return self.vectors.shape[1]

    @property
    def capacity(self) -> int:
        return self.vectors.shape[0]

    @property
    def ids(self):
        return jnp.arange(self.capacity, dtype=jnp.int32)

    @property
    def is_trained(self) -> bool:
        return True

    def describe(self) -> str:
        return "ToyExact"

    def grown(self, capacity: int):
        extra = capacity - self.capacity
        return dataclasses.replace(self, vectors=jnp.pad(self.vectors, ((0, extra), (0, 0))))

    def with_status(self, bits):
        return dataclasses.replace(self, status=self.status | bits)

    # --- the pure cores -------------------------------------------------------------
    def _live(self, selector=None):
        live = jnp.arange(self.capacity) < self.count
        return live if selector is None else live & selector(self.ids)

    def _distances(self, xq, selector):
        d2 = (jnp.sum(xq * xq, 1)[:, None] - 2 * xq @ self.vectors.T
              + jnp.sum(self.vectors ** 2, 1)[None, :])
        return jnp.where(self._live(selector)[None, :], jnp.maximum(d2, 0), jnp.inf)

    def add_core(self, x, n_valid, ids, valid_rows):
        new = jnp.arange(x.shape[0]) < n_valid
        bad = jnp.any(new & ~valid_rows)
        full = self.count + n_valid > self.capacity
        status = jnp.where(bad, 2, 0) | jnp.where(full, 1, 0)  # NONFINITE, OVERFLOW bits
        pos = jnp.where(new & (status == 0), self.count + jnp.arange(x.shape[0]), self.capacity)
        return dataclasses.replace(
            self, vectors=self.vectors.at[pos].set(x.astype(jnp.float32), mode="drop"),
            count=jnp.where(status == 0, self.count + n_valid, self.count).astype(jnp.int32),
            status=self.status | status)

    def search_core(self, xq, k, selector=None, backend="auto"):
        d2 = self._distances(xq.astype(jnp.float32), selector)
        if d2.shape[1] < k:
            d2 = jnp.pad(d2, ((0, 0), (0, k - d2.shape[1])), constant_values=jnp.inf)
        neg, rows = jax.lax.top_k(-d2, k)
        return -neg, jnp.where(jnp.isinf(neg), -1, rows).astype(jnp.int32)

    def range_core(self, xq, radius, capacity, selector=None, backend="auto"):
        d2 = self._distances(xq.astype(jnp.float32), selector)
        match = d2 < radius
        order = jnp.argsort(~match, axis=1, stable=True)[:, :capacity]
        hit = jnp.take_along_axis(match, order, 1)
        if order.shape[1] < capacity:
            pad = ((0, 0), (0, capacity - order.shape[1]))
            order, hit = jnp.pad(order, pad), jnp.pad(hit, pad)
        distances = jnp.where(hit, jnp.take_along_axis(d2, order, 1, mode="clip"), jnp.inf)
        return jnp.sum(match, 1), distances, jnp.where(hit, order, -1).astype(jnp.int32)

    def remove_core(self, selector):
        live = self._live()
        removed = live & selector(self.ids)
        keep = live & ~removed
        target = jnp.where(keep, jnp.cumsum(keep) - 1, self.capacity)
        vectors = jnp.zeros_like(self.vectors).at[target].set(self.vectors, mode="drop")
        return (dataclasses.replace(self, vectors=vectors, count=jnp.sum(keep, dtype=jnp.int32)),
                jnp.sum(removed, dtype=jnp.int32))

    def reconstruct_core(self, ids):
        found = (ids >= 0) & (ids < self.count)
        rows = self.vectors[jnp.clip(ids, 0, max(self.capacity - 1, 0))]
        return jnp.where(found[:, None], rows, jnp.nan), found
