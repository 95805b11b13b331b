"""jann.ops: array kernels with no index knowledge (distances, k-selection, exact k-NN,
range scans, bucketing). Installed as `jann.ops`; never imports `jann`'s index layer.

Each op with a Pallas kernel is a folder with the same files: `reference.py` (the
pure-jnp oracle), `xla.py` (the XLA path), `pallas.py` (the kernel) and `__init__.py`
(the public API and the op's backend choice): `knn`, `hamming`, `adc` (PQ look-up-table
top-k), `ivf_scan` (the IVF list scan) and `topk` (k-selection; its Pallas part is the
running top-k the kernels share). Shared modules: `backend` (the `backend=` switch),
`dispatch` (every op's choice in one import), `plans` (the kernels' block sizes),
`codes` (packed sub-codes), `distances`, `errors`, `sorting`, `range_search`,
`projection`."""

from .namespace import lazy_namespace


# The public ops, imported on first use (`namespace`): `import jann.ops` imports no jax.
_PUBLIC = {
    ".distances": ("METRICS", "canonical_metric", "is_similarity", "normalize_L2",
                   "pairwise_distances", "pairwise_distances_reference", "pairwise_scores",
                   "squared_norms"),
    ".knn": ("knn", "knn_reference", "knn_scan"),
    ".range_search": ("range_scan",),
    ".sorting": ("bucket_sort",),
    ".topk": ("check_k", "kmax", "kmin", "merge_knn_results", "smallest_k"),
}
lazy_namespace(globals(), _PUBLIC)
