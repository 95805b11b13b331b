"""The index interface: what every index type provides, declared in one place.

jann's functions (`jann.train`, `add`, `search`, `range_search`, `remove_ids`,
`reconstruct`, checkpoints, sharding, autotune, serving) use an index only through the
members declared here. A new index type is one module: a `pytree_dataclass` subclassing
`Index` that implements the required members (`REQUIRED`) and overrides the hooks and
capability flags it needs. A missing member fails the class statement itself, naming it
(as equinox checks abstract attributes), not a search much later.

The pure cores run inside jit on static shapes; the public API validates, pads batches and
grows capacity around them:

- `add_core(x, n_valid, ids, valid_rows)` appends x[:n_valid] (ids None: the index numbers
  them) if every valid row is finite and fits, else records why in `status`;
- `search_core(xq, k, selector, **params)` -> (distances, ids), (nq, k) each;
- `range_core(xq, radius, capacity, selector, **params)` -> (counts, distances, ids);
- `remove_core(selector)` -> (index, n_removed);
- `reconstruct_core(ids)` -> (vectors (m, d) float32, found (m,)).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from jann._inputs import as_vectors
from jann.errors import InvalidInputError

__all__ = ["INVERTED_LIST_MEMBERS", "Index", "REQUIRED", "set_index_object_type"]

# What every concrete index defines (as a method, property or dataclass field).
REQUIRED = (
    "d", "metric", "id_mode", "is_trained", "count", "status", "capacity", "ids",
    "describe", "grown", "with_status",
    "add_core", "search_core", "range_core", "remove_core", "reconstruct_core",
)
# What an index with `inverted_lists = True` defines besides (used by
# `add_preassigned`, `search_preassigned`, `merge_from`).
INVERTED_LIST_MEMBERS = ("nlist", "prepare", "scan", "insert_rows", "row_lists", "payload",
                         "norms", "centroids", "codec", "with_next_id")


# What `Index(...)` called itself makes: set by jann.facade, which builds on this module.
_OBJECT_TYPE = None


def set_index_object_type(object_type) -> None:
    """Make `Index(*args)` (the class itself, not a subclass) return object_type(*args)."""
    global _OBJECT_TYPE
    _OBJECT_TYPE = object_type


class Index:
    """Base class of every index type (see the module docstring). Called itself,
    `Index(d, description, metric="l2", **kwargs)`, it makes a FAISS-style index object
    (`jann.facade.IndexHandle`) instead.

    Capabilities are class attributes, so code branches on what an index declares rather
    than on what attributes it happens to have:

    skips_padded_queries: `search_core` takes `n_queries` (traced) and does no work for
        rows past it, so the API may pad a batch to one large bucket.
    skips_padded_adds: `add_core` does next to no work for rows past `n_valid`, so the
        API pads every chunk of a large add to one bucket (one compiled program).
    inverted_lists: the index stores rows in inverted lists and has the
        `INVERTED_LIST_MEMBERS`; `add_core` takes `lists=`.
    takes_float_vectors: `as_input` takes any (n, d) float32 array as it is (False for
        the binary indexes, which take packed codes).
    """

    skips_padded_queries: ClassVar[bool] = False
    skips_padded_adds: ClassVar[bool] = False
    inverted_lists: ClassVar[bool] = False
    takes_float_vectors: ClassVar[bool] = True

    # Required members, as annotations (a dataclass field or a property may provide each).
    d: int
    metric: str
    id_mode: str
    is_trained: bool
    count: jax.Array
    status: jax.Array
    capacity: int
    ids: jax.Array

    def __new__(cls, *args, **kwargs):
        # `jann.Index(d, "IVF1024,PQ32")` itself (not a subclass) is FAISS's habit of an
        # index object: it gives the handle of `jann.facade` (as pathlib.Path gives a
        # PosixPath); index types subclass Index and construct as dataclasses.
        if cls is Index:
            if _OBJECT_TYPE is None:
                raise TypeError("jann.Index is the index interface: subclass it, or import "
                                "jann.facade to make index objects")
            return _OBJECT_TYPE(*args, **kwargs)
        return super().__new__(cls)

    def __init_subclass__(cls, *, abstract: bool = False, **kwargs):
        super().__init_subclass__(**kwargs)
        if abstract:
            return
        wanted = REQUIRED + (INVERTED_LIST_MEMBERS if cls.inverted_lists else ())
        missing = [name for name in wanted if not _provides(cls, name)]
        if missing:
            raise TypeError(f"index type {cls.__name__} does not define {', '.join(missing)} "
                            "(see jann.index.Index)")

    # --- hooks with defaults ---------------------------------------------------------
    def train(self, x, *, key=None, **kwargs):
        """The index trained on x (validated float vectors); untrainable: itself."""
        del x, key, kwargs
        return self

    def as_input(self, x, name: str):
        """x validated as this index's input (float vectors of dimension d by default)."""
        return as_vectors(x, self.d, name)

    def check_add(self, n: int) -> None:
        """Raise (host side, before anything is written) if adding n rows cannot work."""

    def ntotal_live(self):
        """Live vectors (traced int32): `count` unless removal leaves tombstones."""
        return self.count

    def with_status_cleared(self):
        """This index with a zero status word (`jann.clear_status`); wrappers clear the
        words of what they wrap."""
        return dataclasses.replace(self, status=jnp.zeros_like(self.status))

    def next_id(self):
        """The id the next sequentially numbered row gets (traced). `count` suits an index
        that renumbers its rows 0..n-1 after a removal (Flat, as FAISS's IndexFlat); one
        that keeps ids counts every row ever added instead, so no id is handed out twice."""
        return self.count

    def check_search_params(self) -> dict:
        """The search parameters, checked and normalised; the keywords of an override are
        the parameters the index accepts (none by default)."""
        return {}

    def search_parameter_space(self) -> dict[str, tuple]:
        """{parameter: ascending values worth trying} for autotuning; {}: no knobs."""
        return {}

    def search_compiler_options(self, nq: int) -> tuple:
        """XLA compiler options of the `jann.search` / `range_search` program for nq
        queries per call over this index ((name, value) pairs, `jann.programs`): a
        wrapper's are those of the index it wraps; () for XLA's defaults."""
        return () if self.inner is None else self.inner.search_compiler_options(nq)

    def reconstruct_n_core(self, i0, n: int):
        """(vectors, found) for FAISS's `reconstruct_n(i0, n)` (i0 traced, n static): the
        vectors of ids i0..i0+n-1; storage positions where the index keeps insertion order."""
        return self.reconstruct_core((i0 + jnp.arange(n)).astype(self.ids.dtype))

    @property
    def inner(self):
        """The index this one wraps (a transform or refinement in front of it), or None."""
        return None

    def with_inner(self, inner):
        """This index wrapping `inner` instead (only for wrappers)."""
        raise InvalidInputError(f"{type(self).__name__} wraps no index")


def _provides(cls, name: str) -> bool:
    """A member is provided by a subclass's attribute or dataclass field (annotation)."""
    for klass in cls.__mro__:
        if klass is Index or klass is object:
            continue
        if name in vars(klass) or name in vars(klass).get("__annotations__", {}):
            return True
    return False
