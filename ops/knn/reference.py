"""The oracle of exact k-NN: the whole (nq, N) score matrix, then `lax.top_k`; and the
input check every public k-NN entry point shares."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ..distances import canonical_metric, is_similarity, pairwise_distances_reference
from ..errors import InvalidInputError
from ..topk import check_k

__all__ = ["check_pair", "knn_reference"]


def check_pair(xq, xb):
    xq, xb = jnp.asarray(xq), jnp.asarray(xb)
    if xq.ndim != 2 or xb.ndim != 2 or xq.shape[1] != xb.shape[1]:
        raise InvalidInputError(
            f"knn needs 2-D xq and xb with the same dimension, got {xq.shape} and {xb.shape}")
    return xq, xb


@functools.partial(jax.jit, static_argnames=("k", "metric", "p"))
def _knn_reference_jit(xq, xb, k, metric, p):
    scores = pairwise_distances_reference(xq, xb, metric, p)
    keyed = -scores if is_similarity(metric) else scores
    keyed = jnp.where(jnp.isnan(keyed), jnp.inf, keyed)
    take = min(k, xb.shape[0])
    values, idx = jax.lax.top_k(-keyed, take)
    values = -values
    idx = jnp.where(jnp.isinf(values) & (values > 0), -1, idx)
    values = jnp.pad(values, ((0, 0), (0, k - take)), constant_values=jnp.inf)
    idx = jnp.pad(idx, ((0, 0), (0, k - take)), constant_values=-1)
    return (-values if is_similarity(metric) else values), idx


def knn_reference(xq, xb, k: int, metric: str = "l2", p: float = 2.0):
    """Oracle for `knn`: the whole score matrix, then `lax.top_k`."""
    xq, xb = check_pair(xq, xb)
    return _knn_reference_jit(xq, xb, check_k(k), canonical_metric(metric), float(p))
