"""Pairwise distances and similarities between two sets of vectors.

Two implementations per metric: `pairwise_distances_reference`, the direct formula on a
(nx, ny, d) broadcast (the test oracle), and `pairwise_scores`, the one the searches use:
L2 / inner product / cosine go through one matmul (norms expansion, float32 accumulation
whatever the storage dtype), the elementwise metrics are evaluated on row blocks so the
(nx, ny, d) intermediate stays bounded.

Metric definitions follow FAISS (`faiss/utils/extra_distances-inl.h`), checked against
faiss-cpu 1.15 in tests/test_distances.py:

=============  ==========================================  ============
metric         value for vectors x, y                      kind
=============  ==========================================  ============
l2             sum (x - y)^2   (squared, as FAISS)         distance
ip             sum x * y                                   similarity
cosine         ip of the L2-normalised vectors             similarity
l1             sum |x - y|                                 distance
linf           max |x - y|                                 distance
lp             sum |x - y|^p   (no p-th root, as FAISS)    distance
canberra       sum |x - y| / (|x| + |y|)                   distance
braycurtis     sum |x - y| / sum |x + y|                   distance
jensenshannon  0.5 * sum x log(2x/(x+y)) + y log(2y/(x+y))  distance
jaccard        sum min(x, y) / sum max(x, y)               similarity
nan_euclidean  d / #present * sum over present (x - y)^2   distance
abs_ip         |sum x * y|                                 similarity
gower          mean over non-NaN dims: |x - y| where both  distance
               >= 0 (numeric, in [0, 1]); else 0 if x == y
               else 1 (categorical codes are negative)
=============  ==========================================  ============

Where FAISS divides 0 by 0 (canberra and jensenshannon on zero coordinates) it returns NaN;
jann takes such a term as 0, as scipy does, so sparse non-negative data stays searchable.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from .errors import InvalidInputError
from .metric_names import METRICS, canonical_metric, is_similarity

__all__ = [
    "METRICS",
    "canonical_metric",
    "is_similarity",
    "normalize_L2",
    "pairwise_distances",
    "pairwise_distances_reference",
    "pairwise_scores",
    "squared_norms",
]

_MATMUL_METRICS = frozenset({"l2", "ip", "cosine", "abs_ip"})
# Metrics whose inputs may legitimately hold NaN (missing values).
NAN_TOLERANT = frozenset({"nan_euclidean", "gower"})

# Elements of the (rows, ny, d) intermediate the elementwise metrics may hold at once.
_BROADCAST_BUDGET = 1 << 22


def squared_norms(x: jax.Array) -> jax.Array:
    """Row squared norms in float32 (cached by indexes to avoid recomputing per search)."""
    x = x.astype(jnp.float32)
    return jnp.sum(x * x, axis=-1)


def normalize_L2(x: jax.Array, eps: float = 1e-30) -> jax.Array:
    """Rows scaled to unit L2 norm; zero rows stay zero (FAISS leaves them untouched)."""
    x = jnp.asarray(x, jnp.float32)
    norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
    return x / jnp.where(norm > eps, norm, 1.0)


def _safe_div(num, den):
    return jnp.where(den != 0, num / jnp.where(den != 0, den, 1.0), 0.0)


def _xlogx_over(x, m):
    # x * log(x / m) with the 0 * log 0 = 0 convention.
    ok = (x > 0) & (m > 0)
    return jnp.where(ok, x * jnp.log(jnp.where(ok, x, 1.0) / jnp.where(ok, m, 1.0)), 0.0)


def _elementwise(metric: str, p: float) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """f(x[:, None, :], y[None, :, :]) -> (nx, ny) for a metric defined coordinate-wise."""
    if metric == "l2":
        return lambda x, y: jnp.sum((x - y) ** 2, -1)
    if metric in ("ip", "cosine"):
        return lambda x, y: jnp.sum(x * y, -1)
    if metric == "abs_ip":
        return lambda x, y: jnp.abs(jnp.sum(x * y, -1))
    if metric == "l1":
        return lambda x, y: jnp.sum(jnp.abs(x - y), -1)
    if metric == "linf":
        return lambda x, y: jnp.max(jnp.abs(x - y), -1)
    if metric == "lp":
        return lambda x, y: jnp.sum(jnp.abs(x - y) ** p, -1)
    if metric == "canberra":
        return lambda x, y: jnp.sum(_safe_div(jnp.abs(x - y), jnp.abs(x) + jnp.abs(y)), -1)
    if metric == "braycurtis":
        return lambda x, y: _safe_div(jnp.sum(jnp.abs(x - y), -1), jnp.sum(jnp.abs(x + y), -1))
    if metric == "jensenshannon":
        def js(x, y):
            m = 0.5 * (x + y)
            return 0.5 * jnp.sum(_xlogx_over(x, m) + _xlogx_over(y, m), -1)
        return js
    if metric == "jaccard":
        return lambda x, y: _safe_div(jnp.sum(jnp.minimum(x, y), -1),
                                      jnp.sum(jnp.maximum(x, y), -1))
    if metric == "nan_euclidean":
        def nan_euclidean(x, y):
            diff = x - y
            present = ~jnp.isnan(diff)
            total = jnp.sum(jnp.where(present, diff * diff, 0.0), -1)
            n_present = jnp.sum(present, -1)
            dim = x.shape[-1]
            return jnp.where(n_present > 0, total * dim / jnp.maximum(n_present, 1), jnp.nan)
        return nan_euclidean
    if metric == "gower":
        def gower(x, y):
            present = ~(jnp.isnan(x) | jnp.isnan(y))
            numeric = (x >= 0) & (y >= 0)
            term = jnp.where(numeric, jnp.abs(x - y), jnp.where(x == y, 0.0, 1.0))
            n_present = jnp.sum(present, -1)
            total = jnp.sum(jnp.where(present, term, 0.0), -1)
            return jnp.where(n_present > 0, total / jnp.maximum(n_present, 1), jnp.nan)
        return gower
    raise AssertionError(metric)


def pairwise_distances_reference(x, y, metric: str = "l2", p: float = 2.0) -> jax.Array:
    """The oracle: the metric's formula on the full (nx, ny, d) broadcast, float32."""
    metric = canonical_metric(metric)
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y, jnp.float32)
    if metric == "cosine":
        x, y = normalize_L2(x), normalize_L2(y)
    return _elementwise(metric, p)(x[:, None, :], y[None, :, :])


def dot(x: jax.Array, y: jax.Array, *, rows_first: bool = False) -> jax.Array:
    """x @ y.T in float32. rows_first: computed as (y @ x.T).T, y's rows as the matmul's
    left operand; the transpose is kept apart (an optimisation barrier) because XLA
    folds it back into the product. XLA CPU's batched matmul (YNNPACK, jax 0.10, AVX2)
    ran 1.3-3.1x faster that way for a few queries against a block of rows: 16 products
    of 8 queries x 128 rows at d = 128 / 384 / 784: 228 -> 151 us, 366 -> 204 us,
    2835 -> 915 us; at 64 queries 1.08x; at 256 queries (more queries than rows) 0.92x.
    Not for a Flat search's tiles, where it lost 12-20%."""
    # Storage may be fp16/bf16: upcast so products accumulate in float32, and ask for full
    # float32 precision so accelerators do not silently drop to TF32.
    x, y = x.astype(jnp.float32), y.astype(jnp.float32)
    if rows_first:
        return jax.lax.optimization_barrier(dot(y, x)).T
    return jax.lax.dot_general(
        x, y, (((1,), (1,)), ((), ())),
        precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32)


def broadcast_rows(ny: int, d: int) -> int:
    """Rows of x per block so that a (rows, ny, d) intermediate fits the budget."""
    return max(1, _BROADCAST_BUDGET // max(1, ny * d))


def pairwise_scores(x: jax.Array, y: jax.Array, metric: str, p: float = 2.0, *,
                    y_sqnorms: jax.Array | None = None, rows_first: bool = False) -> jax.Array:
    """Metric values between rows of x (nx, d) and y (ny, d), as float32 (nx, ny).

    `metric` must be canonical. For cosine both sides are expected normalised already
    (indexes normalise at add time). `y_sqnorms` lets an index pass cached norms for l2;
    `rows_first`: see `dot`.
    """
    if metric in _MATMUL_METRICS:
        dots = dot(x, y, rows_first=rows_first)
        if metric == "l2":
            yn = squared_norms(y) if y_sqnorms is None else y_sqnorms
            return jnp.maximum(squared_norms(x)[:, None] + yn[None, :] - 2.0 * dots, 0.0)
        return jnp.abs(dots) if metric == "abs_ip" else dots
    f = _elementwise(metric, p)
    x = x.astype(jnp.float32)
    y = y.astype(jnp.float32)
    nx, d = x.shape
    rows = broadcast_rows(y.shape[0], d)
    if nx <= rows:
        return f(x[:, None, :], y[None, :, :])
    n_blocks = -(-nx // rows)
    xp = jnp.pad(x, ((0, n_blocks * rows - nx), (0, 0)))
    out = jax.lax.map(lambda xb: f(xb[:, None, :], y[None, :, :]), xp.reshape(n_blocks, rows, d))
    return out.reshape(n_blocks * rows, -1)[:nx]


@functools.partial(jax.jit, static_argnames=("metric", "p"))
def _pairwise_distances_jit(x, y, metric, p):
    if metric == "cosine":
        x, y = normalize_L2(x), normalize_L2(y)
    return pairwise_scores(x, y, metric, p)


def pairwise_distances(x, y, metric: str = "l2", p: float = 2.0) -> jax.Array:
    """All (nx, ny) metric values between the rows of x and y (FAISS `pairwise_distances`).

    Materialises the full matrix; to search, use `knn`, which never does.
    """
    metric = canonical_metric(metric)
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise InvalidInputError(
            f"pairwise_distances needs 2-D x and y with the same dimension, got "
            f"{x.shape} and {y.shape}")
    return _pairwise_distances_jit(x, y, metric, float(p))
