"""jann.ops: array kernels with no index knowledge (distances, k-selection, exact k-NN,
range scans, bucketing). Installed as `jann.ops`; never imports `jann`'s index layer."""

from .distances import (
    METRICS,
    canonical_metric,
    is_similarity,
    normalize_L2,
    pairwise_distances,
    pairwise_distances_reference,
    pairwise_scores,
    squared_norms,
)
from .dispatch import knn
from .knn import knn_reference, knn_scan
from .range_search import range_scan
from .sorting import bucket_sort
from .topk import check_k, kmax, kmin, merge_knn_results, smallest_k

__all__ = [
    "METRICS", "bucket_sort", "canonical_metric", "check_k", "is_similarity", "kmax", "kmin",
    "knn", "knn_reference", "knn_scan", "merge_knn_results", "normalize_L2",
    "pairwise_distances", "pairwise_distances_reference", "pairwise_scores", "range_scan",
    "smallest_k", "squared_norms",
]
