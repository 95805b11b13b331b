"""k-selection: the k smallest (or largest) entries of each row, for any k.

- `reference.py`: `lax.top_k` (a full sort), the oracle;
- `xla.py`: the exact two-stage selection (`smallest_k`, `merge_smallest_blocks`, ...)
  that every XLA scan uses;
- `pallas.py`: the running top-k held in registers inside the Pallas scan kernels, the
  multi-pass driver for any k and `scan_call`, the launcher every scan kernel shares
  (its `ScanConfig` is the launch configuration `jann.ops.plans` picks);
- here: the validated public functions (`check_k`, `kmin`, `kmax`,
  `merge_knn_results`). Selection has no backend choice of its own: the kernels fuse
  their top-k, so the choice is made per scan (`jann.ops.knn`, `hamming`, `adc`,
  `ivf_scan`).
"""

from __future__ import annotations

import functools
import operator

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import InvalidInputError
from .pallas import ScanConfig
from .reference import top_k_smallest
from .xla import (
    blockwise_merge_applies, blockwise_merge_length, merge_smallest, merge_smallest_blocks,
    smallest_k, smallest_k_gathered, smallest_k_padded)

__all__ = ["ScanConfig", "blockwise_merge_applies", "blockwise_merge_length", "check_k",
           "kmax", "kmin", "merge_knn_results", "merge_smallest", "merge_smallest_blocks",
           "smallest_k", "smallest_k_gathered", "smallest_k_padded", "top_k_smallest"]


def check_k(k) -> int:
    """k as a positive Python int, or a clear error (floats and bools are refused)."""
    if isinstance(k, (bool, float, np.bool_, np.floating)):
        raise InvalidInputError(f"k must be a positive integer, got {k!r}")
    try:
        k = operator.index(k)
    except TypeError:
        raise InvalidInputError(f"k must be a positive integer, got {k!r}") from None
    if k <= 0:
        raise InvalidInputError(f"k must be positive, got {k}")
    return k


@functools.partial(jax.jit, static_argnames=("k", "largest"))
def _select(x, k, largest):
    x = jnp.asarray(x, jnp.float32)
    keyed = -x if largest else x
    values, idx = smallest_k_padded(jnp.where(jnp.isnan(keyed), jnp.inf, keyed), k)
    return (-values if largest else values), idx


def kmin(x, k: int):
    """(values, indices) of the k smallest entries along the last axis, ascending.

    Any k: k > n pads with +inf and -1 (FAISS `kmin`; FAISS GPU stops at k = 2048).
    """
    return _select(jnp.asarray(x), check_k(k), False)


def kmax(x, k: int):
    """(values, indices) of the k largest entries along the last axis, descending."""
    return _select(jnp.asarray(x), check_k(k), True)


def merge_knn_results(distances, ids, keep_max: bool = False):
    """Merge per-shard results (nshard, nq, k) into the global (nq, k) top-k.

    As FAISS `merge_knn_results`: among equal distances the lower shard comes first, and
    entries with id -1 (missing results) never displace real ones.
    """
    distances = jnp.asarray(distances, jnp.float32)
    ids = jnp.asarray(ids)
    if distances.ndim != 3 or distances.shape != ids.shape:
        raise InvalidInputError(
            "merge_knn_results needs distances and ids of the same shape (nshard, nq, k), "
            f"got {distances.shape} and {ids.shape}")
    return _merge_shards(distances, ids, keep_max)


@functools.partial(jax.jit, static_argnames=("keep_max",))
def _merge_shards(distances, ids, keep_max):
    nshard, nq, k = distances.shape
    keyed = -distances if keep_max else distances
    keyed = jnp.where(ids < 0, jnp.inf, keyed)
    flat_d = jnp.transpose(keyed, (1, 0, 2)).reshape(nq, nshard * k)
    flat_i = jnp.transpose(ids, (1, 0, 2)).reshape(nq, nshard * k)
    best, pos = top_k_smallest(flat_d, k)
    out_ids = jnp.where(jnp.isinf(best) & (best > 0), -1, jnp.take_along_axis(flat_i, pos, -1))
    return (-best if keep_max else best), out_ids
