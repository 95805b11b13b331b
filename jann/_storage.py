"""Row storage shared by the indexes: static-capacity buffers with a traced count.

Every index keeps its rows (vectors or codes, ids, cached norms) in buffers whose first
axis is a static capacity; the number of live rows is a traced scalar. Appending inside
jit cannot grow a buffer, so an append that does not fit is refused as a whole and
recorded in a status word instead of dropping vectors; outside jit the API grows the
buffers by doubling first (`grow`), so n adds cost O(log n) compiles.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jann._inputs import id_dtype
from jann.errors import CapacityOverflowError, DuplicateIdError, InvalidInputError
from jann.ops.sorting import prefix_sum

# Bits of `index.status`: why the last traced write was refused.
OVERFLOW = 1
NONFINITE = 2
DUPLICATE_ID = 4
ID_RANGE = 8  # ids that do not fit the stored id dtype (int32 ids chosen under x64)

MIN_CAPACITY = 256


def grown_capacity(capacity: int, needed: int) -> int:
    """The capacity to grow to: doubled until `needed` rows fit (a power of two)."""
    new = max(capacity, MIN_CAPACITY)
    while new < needed:
        new *= 2
    return new


def pad_rows(a: jax.Array, capacity: int, fill=0) -> jax.Array:
    """a with its first axis padded (or cut) to `capacity` (host-side resizing)."""
    extra = capacity - a.shape[0]
    if extra < 0:
        return a[:capacity]
    return jnp.pad(a, [(0, extra)] + [(0, 0)] * (a.ndim - 1), constant_values=fill)


def fitted_capacity(count: int) -> int:
    """Capacity that `shrink_to_fit` leaves: count rounded up to a multiple of 256."""
    return max(MIN_CAPACITY, -(-count // MIN_CAPACITY) * MIN_CAPACITY)


def append_rows(buffers, count, rows, n_valid, accept):
    """Write rows[i][:n_valid] at count.. of each buffer, if `accept` (traced bool).

    Rows past n_valid (bucket padding) and a refused append are scattered out of range and
    dropped, so live rows can never be overwritten.
    """
    n = jax.tree.leaves(rows)[0].shape[0]
    capacity = jax.tree.leaves(buffers)[0].shape[0]
    i = jnp.arange(n, dtype=jnp.int32)
    pos = jnp.where(accept & (i < n_valid), count + i, capacity)
    return jax.tree.map(lambda b, r: b.at[pos].set(r.astype(b.dtype), mode="drop"), buffers, rows)


def compact_rows(buffers, keep):
    """Keep the rows where `keep`, moved to the front in order; returns (buffers, count)."""
    capacity = keep.shape[0]
    target = jnp.where(keep, prefix_sum(keep, dtype=jnp.int32) - 1, capacity)
    moved = jax.tree.map(
        lambda b: jnp.zeros_like(b).at[target].set(b, mode="drop"), buffers)
    return moved, jnp.sum(keep, dtype=jnp.int32)


def advanced(n_added, n_valid, status):
    """The rows-ever-added counter after an append that `status` 0 accepted."""
    return jnp.where(status == 0, n_added + n_valid, n_added).astype(n_added.dtype)


def append_status(index, n_valid, new_ids, valid_rows):
    """Status bits of appending n_valid rows (ids, per-row finiteness) to an index with
    `count`, `capacity`, `ids`, `id_mode`: 0 when the append may proceed."""
    new_valid = jnp.arange(valid_rows.shape[0]) < n_valid
    status = jnp.where(jnp.all(valid_rows | ~new_valid), 0, NONFINITE)
    status |= jnp.where(index.count + n_valid > index.capacity, OVERFLOW, 0)
    if index.id_mode == "idmap2":
        dup = has_duplicates(
            jnp.concatenate([index.ids, new_ids.astype(index.ids.dtype)]),
            jnp.concatenate([live_mask(index.capacity, index.count), new_valid]))
        status |= jnp.where(dup, DUPLICATE_ID, 0)
    return status


def _sentinel_keys(ids, valid):
    return jnp.where(valid, ids, jnp.iinfo(ids.dtype).max)


def has_duplicates(ids, valid) -> jax.Array:
    """True when two valid entries of ids are equal (valid ids are < the dtype's max)."""
    keys = jnp.sort(_sentinel_keys(ids, valid))
    return jnp.any((keys[1:] == keys[:-1]) & (keys[1:] != jnp.iinfo(ids.dtype).max))


def id_order(stored_ids, valid):
    """Row positions sorted by id, dead rows last: a direct map for `lookup_ids`."""
    return jnp.argsort(_sentinel_keys(stored_ids, valid)).astype(jnp.int32)


def lookup_ids(stored_ids, valid, wanted, order=None):
    """Row position of each wanted id among the valid stored ids, and whether found.

    `order` (from `id_order`, kept up to date by the index) saves the sort."""
    keys = _sentinel_keys(stored_ids, valid)
    if order is None:
        order = jnp.argsort(keys)
    sorted_keys = keys[order]
    pos = jnp.clip(jnp.searchsorted(sorted_keys, wanted), 0, keys.shape[0] - 1)
    found = (sorted_keys[pos] == wanted) & (wanted != jnp.iinfo(keys.dtype).max)
    return order[pos].astype(jnp.int32), found


def live_mask(capacity: int, count) -> jax.Array:
    return jnp.arange(capacity, dtype=jnp.int32) < count


def empty_ids(capacity: int) -> jax.Array:
    return jnp.full((capacity,), -1, id_dtype())


def raise_for_status(status: int) -> None:
    """Turn a refused write's status bits into the exception that explains it."""
    if status & NONFINITE:
        raise InvalidInputError("the added vectors contain NaN or inf; nothing was added")
    if status & DUPLICATE_ID:
        raise DuplicateIdError(
            "the added ids repeat each other or ids already in the index, which this index "
            "forbids (IDMap2); nothing was added")
    if status & ID_RANGE:
        raise InvalidInputError(
            "the added ids do not fit the index's int32 ids (placed with ids='int32'); "
            "nothing was added")
    if status & OVERFLOW:
        raise CapacityOverflowError(
            "an add inside jit did not fit the index capacity and was refused; call "
            "jann.reserve(index, n) before jitting")


# How an index numbers its rows: in order of addition, or by the user's ids (kept unique
# by "idmap2", as FAISS's IndexIDMap2).
ID_MODES = ("sequential", "idmap", "idmap2")


def id_mode_prefix(id_mode: str) -> str:
    """The factory-string prefix naming an id mode ("IDMap," for "idmap", ...)."""
    return {"sequential": "", "idmap": "IDMap,", "idmap2": "IDMap2,"}[id_mode]


def host_int(x) -> int:
    return int(np.asarray(x))


class StatusWord:
    """The `status` field every row-storing index keeps (bits above)."""

    def with_status(self, bits):
        """The index with `bits` (traced int32) added to its status word."""
        return dataclasses.replace(self, status=self.status | bits)


class ListedRows(StatusWord):
    """What every inverted-file index derives from its CSR storage (`payload` rows sorted
    by list, `offsets` (nlist + 1)) and its configuration (`id_mode`, `description`)."""

    @property
    def nlist(self) -> int:
        return self.offsets.shape[0] - 1

    def next_id(self):
        """Rows ever added (`n_added`): removals keep ids, so numbering never goes back."""
        return self.n_added

    def with_next_id(self, n_added):
        return dataclasses.replace(self, n_added=jnp.asarray(n_added, self.n_added.dtype))

    @classmethod
    def restored_fields(cls, fields: dict) -> dict:
        """Fields read from a checkpoint, completed: one written before `n_added` existed
        continues its numbering after the largest stored id."""
        if "n_added" not in fields and "ids" in fields and "count" in fields:
            count = int(np.asarray(fields["count"]))
            ids = np.asarray(fields["ids"])[:count]
            top = count
            if fields.get("id_mode", "sequential") == "sequential" and ids.size:
                top = max(count, int(ids.max()) + 1)
            fields = {**fields, "n_added": jnp.asarray(top, ids.dtype)}
        return fields

    @property
    def capacity(self) -> int:
        return self.payload.shape[0]

    def describe(self) -> str:
        return id_mode_prefix(self.id_mode) + self.description
