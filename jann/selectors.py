"""ID selectors: which ids a `remove_ids` removes, or a filtered `search` may return.

FAISS's `IDSelector*` family as pytrees: every selector is a function of an id array
(`sel(ids) -> bool mask`) that runs inside jit, so the same object filters during a
search (the exact top-k among allowed ids, not a post-filtered shorter list) and picks
what to remove. Array contents are leaves, so a new id list of the same padded size does
not recompile. Combine with `~`, `&`, `|`, `^` or the FAISS names `IDSelectorNot/And/Or/XOr`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jann._inputs import as_array, id_dtype, is_traced, outside_id_range
from jann.errors import InvalidDtypeError, InvalidInputError

__all__ = [
    "IDSelector", "IDSelectorAll", "IDSelectorAnd", "IDSelectorArray", "IDSelectorBatch",
    "IDSelectorBitmap", "IDSelectorNot", "IDSelectorOr", "IDSelectorRange", "IDSelectorXOr",
]


class IDSelector:
    """Base class: `sel(ids)` -> bool array of the same shape as ids.

    Subclasses list their pytree children in `_children`; `__init__` validates user input,
    while unflattening (inside jax transformations) bypasses it, since leaves may then be
    tracers.
    """

    _children: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        fields = cls._children

        def flatten(sel):
            return [getattr(sel, f) for f in fields], None

        def unflatten(_, children):
            sel = object.__new__(cls)
            sel.__dict__.update(zip(fields, children))
            return sel

        jax.tree_util.register_pytree_node(cls, flatten, unflatten)

    def __call__(self, ids: jax.Array) -> jax.Array:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self):
        inner = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._children)
        return f"{type(self).__name__}({inner})"

    def __invert__(self):
        return IDSelectorNot(self)

    def __and__(self, other):
        return IDSelectorAnd(self, other)

    def __or__(self, other):
        return IDSelectorOr(self, other)

    def __xor__(self, other):
        return IDSelectorXOr(self, other)


def _integer(x, name):
    a = as_array(x, name)
    if a.size == 0 and not is_traced(a):  # [] is float64 to numpy, and holds no ids
        return np.zeros(a.shape, np.int64)
    if not np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.bool_):
        raise InvalidDtypeError(f"{name} must be integers, got {x!r} (dtype {a.dtype})")
    return a


def _selector(x, name):
    if not isinstance(x, IDSelector):
        raise InvalidInputError(f"{name} must be an IDSelector, got {type(x).__name__}")
    return x


class IDSelectorAll(IDSelector):
    """Every id."""

    def __call__(self, ids):
        return jnp.ones(jnp.shape(ids), bool)


class IDSelectorRange(IDSelector):
    """imin <= id < imax.

    Held as the inclusive bounds [imin, last] within the id dtype, so bounds past it
    (imax = 2**32 over int32 ids) select what they say instead of wrapping around."""

    _children = ("imin", "last")

    def __init__(self, imin, imax):
        imin, imax = _integer(imin, "IDSelectorRange imin"), _integer(imax, "IDSelectorRange imax")
        if is_traced(imin, imax):
            self.imin = jnp.asarray(imin, id_dtype())
            self.last = jnp.asarray(imax, id_dtype()) - 1
            return
        # Python ints (object arrays: one range per query is allowed), so no bound wraps
        imin, imax = (np.asarray(v).astype(object) for v in (imin, imax))
        if np.any(imin > imax):
            raise InvalidInputError(f"IDSelectorRange needs imin <= imax (it selects "
                                    f"imin <= id < imax), got imin={imin} > imax={imax}")
        lo, hi = (int(v) for v in (np.iinfo(id_dtype()).min, np.iinfo(id_dtype()).max))
        empty = (imin == imax) | (imax - 1 < lo) | (imin > hi)
        first = np.where(empty, hi, np.maximum(imin, lo))
        last = np.where(empty, lo, np.minimum(imax - 1, hi))
        self.imin = jnp.asarray(first.astype(np.int64), id_dtype())
        self.last = jnp.asarray(last.astype(np.int64), id_dtype())

    @property
    def imax(self):
        """The exclusive upper bound, as Python ints (it may not fit the id dtype)."""
        imin, last = (np.asarray(v).astype(object) for v in (self.imin, self.last))
        bound = np.where(last >= imin, last + 1, imin)
        return int(bound) if bound.ndim == 0 else bound

    def __call__(self, ids):
        return (ids >= self.imin) & (ids <= self.last)


class IDSelectorBatch(IDSelector):
    """Ids in a given collection (FAISS's IDSelectorBatch and IDSelectorArray).

    Stored sorted and padded to a power of two (padding repeats the largest id), so a
    membership test is one `searchsorted` and sets of similar size share a compile.
    """

    _children = ("sorted_ids", "size")

    def __init__(self, ids):
        a = np.unique(np.asarray(_integer(ids, "IDSelectorBatch ids")).reshape(-1))
        # ids the id dtype cannot hold are in no index: dropped (cast, they would wrap
        # onto other ids)
        a = a[~outside_id_range(a, id_dtype())]
        n = a.shape[0]
        padded = 1 << max(0, (max(n, 1) - 1).bit_length())
        fill = a[-1] if n else 0
        a = np.concatenate([a, np.full(padded - n, fill, a.dtype)]).astype(id_dtype())
        self.sorted_ids = jnp.asarray(a)
        self.size = jnp.asarray(n, jnp.int32)

    def __call__(self, ids):
        pos = jnp.clip(jnp.searchsorted(self.sorted_ids, ids), 0, self.sorted_ids.shape[0] - 1)
        return (pos < self.size) & (self.sorted_ids[pos] == ids)


IDSelectorArray = IDSelectorBatch


class IDSelectorBitmap(IDSelector):
    """Id i is selected when bit (i & 7) of bitmap[i >> 3] is set (FAISS's layout).

    Accepts the packed uint8 bitmap, or a bool mask of length n (packed for you).
    """

    _children = ("bitmap",)

    def __init__(self, bitmap):
        a = as_array(bitmap, "IDSelectorBitmap bitmap")
        if a.dtype == np.bool_:
            a = np.packbits(np.asarray(a), bitorder="little")
        if a.dtype != np.uint8 or a.ndim != 1:
            raise InvalidInputError(
                "IDSelectorBitmap takes a 1-D uint8 bitmap or a 1-D bool mask, got "
                f"dtype {a.dtype}, shape {tuple(a.shape)}")
        self.bitmap = jnp.asarray(a)

    def __call__(self, ids):
        n_bits = self.bitmap.shape[0] * 8
        inside = (ids >= 0) & (ids < n_bits)
        safe = jnp.where(inside, ids, 0)
        byte = self.bitmap[safe >> 3]
        return inside & (((byte >> (safe & 7).astype(jnp.uint8)) & 1) == 1)


class IDSelectorNot(IDSelector):
    """Ids the wrapped selector rejects."""

    _children = ("sel",)

    def __init__(self, sel):
        self.sel = _selector(sel, "IDSelectorNot argument")

    def __call__(self, ids):
        return ~self.sel(ids)


class _Binary(IDSelector):
    _children = ("lhs", "rhs")

    def __init__(self, lhs, rhs):
        name = type(self).__name__
        self.lhs = _selector(lhs, f"{name} lhs")
        self.rhs = _selector(rhs, f"{name} rhs")


class IDSelectorAnd(_Binary):
    """Ids both selectors accept."""

    def __call__(self, ids):
        return self.lhs(ids) & self.rhs(ids)


class IDSelectorOr(_Binary):
    """Ids either selector accepts."""

    def __call__(self, ids):
        return self.lhs(ids) | self.rhs(ids)


class IDSelectorXOr(_Binary):
    """Ids exactly one selector accepts."""

    def __call__(self, ids):
        return self.lhs(ids) ^ self.rhs(ids)
