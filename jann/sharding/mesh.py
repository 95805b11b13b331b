"""Mesh helpers shared by the sharding modules: `shard_map` without the replication
check, laying arrays out on a mesh, a device's own shard of a stacked pytree, checking a
mesh axis, and putting a host-side pytree on a mesh (one process or several)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from jann.errors import InvalidInputError


try:  # jax >= 0.7
    _shard_map = jax.shard_map
    _NO_REPLICATION_CHECK = {"check_vma": False}
except AttributeError:  # pragma: no cover - older jax
    from jax.experimental.shard_map import shard_map as _shard_map
    _NO_REPLICATION_CHECK = {"check_rep": False}


def smap(f, mesh, in_specs, out_specs):
    # The checker cannot infer that an all-gather followed by the same merge on every
    # device gives replicated values; the merges of this package make them equal by construction.
    return _shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                      **_NO_REPLICATION_CHECK)


def constrain(tree, mesh, spec):
    """Lay tree out as `spec` says. A mesh with Explicit axes (jax.make_mesh's default)
    types every array with its sharding and shard_map then takes only matching inputs;
    on Auto axes shard_map moves the data itself."""
    explicit = getattr(getattr(jax.sharding, "AxisType", None), "Explicit", None)
    if explicit is None or explicit not in getattr(mesh, "axis_types", ()):
        return tree
    sharding = NamedSharding(mesh, spec)
    return jax.tree.map(lambda a: jax.sharding.reshard(jnp.asarray(a), sharding), tree)


def local_shard(block):
    """The one shard a device holds, from its (1, ...) block of the stacked pytree."""
    return jax.tree.map(lambda a: a[0], block)


def restack(index):
    return jax.tree.map(lambda a: a[None], index)


def check_mesh(mesh, axis, what="axis"):
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


def all_local(mesh) -> bool:
    return not mesh.is_multi_process


def place_on_mesh(tree, mesh, spec):
    """Put a host-side pytree on the mesh. With several processes every process passes
    the same values and contributes the parts its own devices hold."""
    sharding = NamedSharding(mesh, spec)
    if all_local(mesh):
        return jax.device_put(tree, sharding)

    def put(a):
        host = np.asarray(a)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    return jax.tree.map(put, tree)
