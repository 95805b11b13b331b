"""`jann.Index(d, "IVF1024,PQ32")`: FAISS's object habits over jann's immutable indexes.

A FAISS script builds an index object, trains and fills it in place, sets `nprobe` on it
and searches. `jann.Index(d, "IVF1024,PQ32")` (the index interface class called itself,
not subclassed) returns an `IndexHandle`, which behaves that way: each mutation runs the
functional call (`jann.train`, `jann.add`, ...) and replaces `ix.state`, the immutable
index (a pytree: pass it to `jax.jit`, `jax.vmap`, `jann.shard`). Adds donate the old
state's buffers (no copy of the index per add), so a state taken out of `ix.state`
before an add must not be used after it; `ix.state` is always the current one. Search
parameters set as attributes (`ix.nprobe = 16`, FAISS's `efSearch` and
`quantizer_efSearch` too) are checked when set and apply to every later search.
Results are numpy arrays, as FAISS returns them.

Small adds are written behind: rows of an add of at most `STAGED_ADD_ROWS` host
vectors are checked at once (dimension, dtype, NaN / inf, ids), kept on the host, and
written by one `jann.add` at the next use of the index (search, ntotal, `ix.state`, ...)
or once `MAX_STAGED_ADDS` adds wait. A FAISS-style loop of one-row adds then costs a numpy
copy per row (a few us; one compiled add per row costs 0.05-0.25 ms on CPU, most of it
dispatch), and the index a reader sees always holds every row added. IDMap2 indexes
(their duplicate ids are found on the device) and traced or device inputs are written
at once.
"""

from __future__ import annotations

import inspect
import os

import numpy as np

from jann import api, checkpoint, emptying, ranges
from jann._inputs import as_ids, check_finite, search_param_names
from jann.errors import InvalidInputError, JannError
from jann.factory import index_factory
from jann.faiss_files import read_faiss
from jann.index import Index as IndexInterface
from jann.index import set_index_object_type
from jann.ops.distances import NAN_TOLERANT

__all__ = ["IndexHandle", "read_index", "write_index"]

# Adds of at most this many host rows are staged, and written once this many adds wait.
STAGED_ADD_ROWS = 64
MAX_STAGED_ADDS = 256

# FAISS's names of the search parameters jann names otherwise.
FAISS_PARAMETER_NAMES = {"efSearch": "ef", "quantizer_efSearch": "quantizer_ef"}


def _parameter_name(name: str) -> str:
    return FAISS_PARAMETER_NAMES.get(name, name)


class IndexHandle:
    """A FAISS-style index object: `jann.Index(d, description="Flat", metric="l2", **kw)`
    (the arguments of `jann.index_factory`), or `jann.Index(state)` around a jann index."""

    def __init__(self, d, description: str = "Flat", metric: str = "l2", **kwargs):
        if isinstance(d, IndexInterface):
            if description != "Flat" or metric != "l2" or kwargs:
                raise InvalidInputError("jann.Index(state) takes no factory arguments")
            state = d
        else:
            state = index_factory(d, description, metric, **kwargs)
        object.__setattr__(self, "_state", state)
        object.__setattr__(self, "_staged", [])  # (rows, ids or None) not yet written
        object.__setattr__(self, "search_parameters", {})

    @property
    def state(self):
        """The jann index holding every row added so far (staged rows written first)."""
        if self._staged:
            self._write_staged()
        return self._state

    # ----------------------------------------------------------------- search parameters
    def __setattr__(self, name, value):
        if name == "state":  # replaces the index, rows staged for the old one included
            if not isinstance(value, IndexInterface):
                raise InvalidInputError(f"state must be a jann index, got {type(value).__name__}")
            object.__setattr__(self, "_state", value)
            self._staged.clear()
            return
        key = _parameter_name(name)
        if key not in search_param_names(self.state):
            raise AttributeError(
                f"jann.Index of {self.describe()} has no attribute {name!r} to set (its "
                f"search parameters: {search_param_names(self.state) or 'none'})")
        merged = {**self.search_parameters, key: value}
        api.search_program_params(self.state, merged)  # raises naming a bad value
        self.search_parameters[key] = value

    def __getattr__(self, name):  # only for names not found otherwise: search parameters
        if name.startswith("_") or name in ("state", "search_parameters"):
            raise AttributeError(name)
        key = _parameter_name(name)
        if key not in search_param_names(self.state):
            raise AttributeError(f"jann.Index of {self.describe()} has no attribute {name!r}")
        if key in self.search_parameters:
            return self.search_parameters[key]
        return _default_parameter(self.state, key)

    # ------------------------------------------------------------------------- reading
    @property
    def d(self) -> int:
        return self.state.d

    @property
    def ntotal(self) -> int:
        return api.ntotal(self.state)

    @property
    def is_trained(self) -> bool:
        return self.state.is_trained

    @property
    def metric(self) -> str:
        return self.state.metric

    def describe(self) -> str:
        return self.state.describe()

    def __repr__(self):
        return (f"jann.Index({self.describe()!r}, d={self.d}, ntotal={self.ntotal}, "
                f"metric={self.metric!r}, search_parameters={self.search_parameters})")

    def search(self, x, k: int, **params):
        """(distances, ids) as numpy arrays (nq, k); keyword parameters override the
        attributes for this call."""
        distances, ids = api.search(self.state, x, k, **{**self.search_parameters, **params})
        return np.asarray(distances), np.asarray(ids)

    def range_search(self, x, radius, **params):
        """(lims, distances, ids) as FAISS lays them out."""
        return tuple(np.asarray(a) for a in ranges.range_search(
            self.state, x, radius, **{**self.search_parameters, **params}))

    def reconstruct(self, i):
        return np.asarray(api.reconstruct(self.state, i))

    def reconstruct_n(self, i0: int, n: int):
        return np.asarray(api.reconstruct_n(self.state, i0, n))

    # ------------------------------------------------------------------------ mutation
    def train(self, x, key=None):
        self.state = api.train(self.state, x, key=key)

    def add(self, x):
        self._add(x, None)

    def add_with_ids(self, x, ids):
        self._add(x, ids)

    def _add(self, x, ids):
        staged = self._staged_rows(x, ids)
        if staged is None:
            self._write(x, ids)
            return
        self._staged.append(staged)
        if len(self._staged) >= MAX_STAGED_ADDS:
            self._write_staged()

    def _staged_rows(self, x, ids):
        """(rows, ids) checked as `jann.add` checks them, to be written later; None for
        an add written at once (large, on a device, traced, or into an IDMap2 index)."""
        state = self._state
        if not isinstance(x, np.ndarray) or x.ndim != 2 or x.shape[0] > STAGED_ADD_ROWS \
                or state.id_mode == "idmap2" or not state.is_trained:
            return None
        if ids is None and state.id_mode != "sequential" or \
                ids is not None and state.id_mode == "sequential":
            return None  # `jann.add` raises naming the mismatch
        if state.takes_float_vectors and x.dtype == np.float32 and x.shape[1] == state.d \
                and np.isfinite(x).all():
            rows = x.copy()  # the common case, checked in ~3 us; the caller may reuse x
        else:
            rows = np.array(state.as_input(x, "x"))
            check_finite(rows, "x", allow_nan=state.metric in NAN_TOLERANT)
        if not self._staged:  # (the state is as it was at the first staged add)
            state.check_add(len(rows))
        return rows, None if ids is None else as_ids(ids, len(rows))

    def _write_staged(self):
        staged = self._staged[:]
        self._staged.clear()
        rows = np.concatenate([r for r, _ in staged])
        ids = None if staged[0][1] is None else np.concatenate([i for _, i in staged])
        self._write(rows, ids)

    def _write(self, x, ids):
        try:
            object.__setattr__(self, "_state", api.add(self.state, x, ids, donate=True))
        except JannError as error:
            intact = getattr(error, "index", None)  # a refused, donated add
            if intact is not None:
                object.__setattr__(self, "_state", intact)
            raise

    def reset(self):
        """Remove every vector, keep the training; new rows are numbered from 0 again."""
        self.state = emptying.reset(self.state)

    def remove_ids(self, selector) -> int:
        """Remove the vectors `selector` (an IDSelector or ids) accepts; the number removed."""
        self.state, removed = api.remove_ids(self.state, selector)
        return removed


def _default_parameter(state, key):
    """The value a search uses for `key` when none is given (the index's own default)."""
    target = state
    while key not in _own_parameter_names(target) and getattr(target, "inner", None) is not None:
        target = target.inner
    parameter = inspect.signature(type(target).check_search_params).parameters.get(key)
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return None
    default = parameter.default
    return 1 if key == "nprobe" and default is None else default  # FAISS's nprobe = 1


def _own_parameter_names(index):
    return [p for p in inspect.signature(type(index).check_search_params).parameters
            if p != "self"]


def write_index(index, path) -> str:
    """Save an index object (`jann.Index(...)`) or a jann index as a jann checkpoint at
    `path` (a folder; any index kind, restorable onto another mesh). `jann.write_faiss`
    writes FAISS's format."""
    state = index.state if isinstance(index, IndexHandle) else index
    return checkpoint.save(state, path)


def read_index(path) -> IndexHandle:
    """An index object (as `jann.Index(...)` makes) from a jann checkpoint folder
    (`write_index`, `jann.save`) or a FAISS index file (`faiss.write_index`, read with
    `jann.read_faiss`)."""
    if isinstance(path, (str, os.PathLike)) and os.path.isdir(path):
        return IndexHandle(checkpoint.load(path))
    return IndexHandle(read_faiss(path))


set_index_object_type(IndexHandle)
