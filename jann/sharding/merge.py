"""Merging per-device results: the global top-k of every device's top-k (inside
`shard_map`), and `search_shard`, a search from inside your own `shard_map`."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jann.api import search
from jann.ops import distances as dist_ops
from jann.sharding.mesh import local_shard


def merge_results(distances, ids, axis_name, k: int | None = None, *, similarity=False):
    """Inside shard_map: merge every device's (nq, k) results over `axis_name` into the
    global top-k (one all-gather of the candidates, then a top-k of S * k per query).

    Ties go to the smaller id (the order of an unsharded index with sequential ids);
    missing results (id -1) come last, as +inf (-inf for similarities) and -1.
    """
    k = distances.shape[-1] if k is None else k
    all_d = jax.lax.all_gather(distances, axis_name, axis=1, tiled=True)
    all_i = jax.lax.all_gather(ids, axis_name, axis=1, tiled=True)
    return _merge_rows(all_d, all_i, k, similarity)


def _merge_rows(distances, ids, k, similarity):
    missing = ids < 0
    keyed = jnp.where(missing, jnp.inf, -distances if similarity else distances)
    top_id = jnp.iinfo(ids.dtype).max
    keyed, id_key = jax.lax.sort((keyed, jnp.where(missing, top_id, ids)), dimension=1,
                                 num_keys=2)
    keyed, id_key = keyed[:, :k], id_key[:, :k]
    return (-keyed if similarity else keyed), jnp.where(id_key == top_id, -1, id_key)


def search_shard(block, xq, k: int, *, axis_name: str, selector=None, **params):
    """Search from inside your own `shard_map`: `block` is this device's part of a
    sharded index's `.index` (pass `sharded.spec` as its in_spec), xq the queries this
    device answers; returns the global (nq, k) top-k on every device of `axis_name`."""
    local = local_shard(block)
    distances, ids = search(local, xq, k, selector=selector, **params)
    return merge_results(distances, ids, axis_name, k,
                         similarity=dist_ops.is_similarity(local.metric))
