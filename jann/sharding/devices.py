"""Placing an index on devices: `shard` (split over a mesh axis), `replicate`,
`to_devices` (the FAISS GPU-cloner names), `unshard` (back to one device), and
`device_bytes` (what each device holds)."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from jann import _storage
from jann.errors import InvalidInputError
from jann.flat import STORAGE_DTYPES, FlatIndex
from jann.graph import GraphIndex
from jann.ivf import IVFIndex
from jann.ops import distances as dist_ops
from jann.sharding.index import ShardedIndex
from jann.sharding.layout import (merge_stack, rows_by_id, split_all, sub_graph_stack,
                                  with_id_mode)
from jann.sharding.mesh import all_local, check_mesh, place_on_mesh


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
    axis = check_mesh(mesh, axis)
    if query_axis is not None:
        query_axis = check_mesh(mesh, query_axis, "query_axis")
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
        stacked = sub_graph_stack(index, *rows_by_id([index]), nshards)
        return ShardedIndex(place_on_mesh(stacked, mesh, P(axis)), mesh, axis, query_axis,
                            index.id_mode)
    id_mode = index.id_mode
    if id_mode == "sequential":
        index = with_id_mode(index, "idmap")  # shards store the global ids
    n = _storage.host_int(index.count)
    stacked = split_all(index, nshards, _storage.fitted_capacity(-(-n // nshards)), one=True)
    return ShardedIndex(place_on_mesh(stacked, mesh, P(axis)), mesh, axis, query_axis, id_mode)


_shard = shard  # `to_devices(shard=...)` shadows the name


def replicate(index, mesh: Mesh, axis: str | None = None, *, dtype: str | None = None,
              ids: str | None = None) -> ShardedIndex:
    """A copy of the index on every device of the mesh; queries are split over mesh axis
    `axis` (FAISS `IndexReplicas`; `index_cpu_to_all_gpus(shard=False)`). Any index
    type. `dtype` / `ids` are the placement options (module docstring)."""
    if isinstance(index, ShardedIndex):
        raise InvalidInputError("the index is already placed on a mesh; jann.unshard it first")
    axis = check_mesh(mesh, axis)
    index = _convert(index, dtype, ids)
    return ShardedIndex(place_on_mesh(index, mesh, P()), mesh, None, axis, index.id_mode)


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
    if not all_local(index.mesh):
        raise InvalidInputError(
            "unshard gathers every shard on this process, but the mesh spans several "
            "processes; jann.save the index and jann.load(path) it on one host instead")
    device = jax.local_devices()[0] if device is None else device
    # A SingleDeviceSharding, not a bare device: the latter keeps an Explicit mesh type.
    inner = jax.device_put(index.index, jax.sharding.SingleDeviceSharding(device))
    return merge_stack(inner, index.id_mode) if index.sharded else inner


def device_bytes(index) -> dict:
    """Bytes each device holds of the index ({device: bytes}, addressable ones)."""
    out = {}
    for leaf in jax.tree.leaves(index):
        for s in leaf.addressable_shards:
            out[s.device] = out.get(s.device, 0) + s.data.nbytes
    return out
