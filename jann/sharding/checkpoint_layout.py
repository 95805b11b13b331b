"""Sharded checkpoints (for `jann.checkpoint`): the JSON placement of a sharded index,
and how a saved layout of S shards is restored onto a mesh of M devices (see the package
docstring for the redistribution; graph sub-graphs rebuilt when the count changes)."""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jann import _storage
from jann.errors import InvalidInputError
from jann.graph import GraphIndex
from jann.sharding.index import ShardedIndex
from jann.sharding.layout import rows_by_id, split, sub_graph_stack, unstacked
from jann.sharding.mesh import all_local, check_mesh, place_on_mesh, restack, smap


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
    axis = check_mesh(mesh, axis if axis is not None else (
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
            return restack(split(block, members, part, capacity))

        dealt = jax.jit(smap(deal, grid, (P("_group"),), P(("_group", "_member"))))(stack)
        target = NamedSharding(mesh, P(axis))
        placed = jax.tree.map(lambda a: jax.make_array_from_single_device_arrays(
            a.shape, target, [s.data for s in a.addressable_shards]), dealt)
        return ShardedIndex(placed, mesh, axis, query_axis, info["id_mode"])

    return read, finish


def _regraph(stack, info, mesh, axis, query_axis):
    """Sub-graphs saved over S devices as sub-graphs for this mesh's axis: rebuilt on
    the host from their rows (the only way to move graph rows between shards)."""
    if not all_local(mesh):
        raise InvalidInputError(
            f"a graph index saved over {info['nshards']} devices is restored onto "
            f"{mesh.shape[axis]} by rebuilding its sub-graphs on one host, but the mesh "
            "spans several processes: restore onto the saved device count, or load it "
            "without a mesh and jann.shard it")
    shards = unstacked(jax.device_get(stack))
    stacked = sub_graph_stack(shards[0], *rows_by_id(shards), mesh.shape[axis])
    return ShardedIndex(place_on_mesh(stacked, mesh, P(axis)), mesh, axis, query_axis,
                        info["id_mode"])


def is_sharded(index) -> bool:
    return isinstance(index, ShardedIndex)
