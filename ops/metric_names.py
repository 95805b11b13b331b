"""Metric names: the canonical ones, the FAISS and scipy aliases accepted, and which are
similarities. No jax: `jann.client` reads results by these names without importing it.
"""

from __future__ import annotations

from .errors import UnknownMetricError

__all__ = ["METRICS", "canonical_metric", "is_similarity"]

_ALIASES = {
    "l2": "l2", "sqeuclidean": "l2", "euclidean": "l2", "metric_l2": "l2",
    "ip": "ip", "inner_product": "ip", "dot": "ip", "metric_inner_product": "ip",
    "cosine": "cosine", "angular": "cosine",
    "l1": "l1", "cityblock": "l1", "manhattan": "l1", "metric_l1": "l1",
    "linf": "linf", "chebyshev": "linf", "metric_linf": "linf",
    "lp": "lp", "minkowski": "lp", "metric_lp": "lp",
    "canberra": "canberra", "metric_canberra": "canberra",
    "braycurtis": "braycurtis", "metric_braycurtis": "braycurtis",
    "jensenshannon": "jensenshannon", "metric_jensenshannon": "jensenshannon",
    "jaccard": "jaccard", "metric_jaccard": "jaccard",
    "nan_euclidean": "nan_euclidean", "naneuclidean": "nan_euclidean",
    "metric_naneuclidean": "nan_euclidean",
    "abs_ip": "abs_ip", "abs_inner_product": "abs_ip", "metric_abs_inner_product": "abs_ip",
    "gower": "gower", "metric_gower": "gower",
}
METRICS = ("l2", "ip", "cosine", "l1", "linf", "lp", "canberra", "braycurtis",
           "jensenshannon", "jaccard", "nan_euclidean", "abs_ip", "gower")
_SIMILARITIES = frozenset({"ip", "cosine", "jaccard", "abs_ip"})


def canonical_metric(metric: str) -> str:
    """The canonical name of `metric` (case-insensitive; FAISS and scipy aliases accepted)."""
    key = str(metric).strip().lower().replace("-", "_")
    if key not in _ALIASES:
        raise UnknownMetricError(
            f"unknown metric {metric!r}; supported: {', '.join(METRICS)}")
    return _ALIASES[key]


def is_similarity(metric: str) -> bool:
    """True when larger values mean closer (search keeps the k largest)."""
    return metric in _SIMILARITIES
