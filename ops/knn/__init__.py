"""Exact k-nearest-neighbour search (distance + top-k, fused), any metric.

- `reference.py`: the oracle (`knn_reference`: full score matrix, `lax.top_k`) and the
  input check (`check_pair`);
- `xla.py`: the streamed scan every platform runs (`knn_scan`) and the streaming loops the
  other XLA scans reuse;
- `pallas.py`: the fused Pallas kernel for l2 / ip (`knn_pallas`);
- here: the choice between them (`knn_search`, `backend=`, see `jann.ops.backend`) and the
  public brute-force `knn`.
"""

from __future__ import annotations

import functools

import jax

from ..backend import choose, resolve_backend
from ..distances import canonical_metric, normalize_L2
from ..topk import check_k
from .pallas import knn_pallas
from .reference import check_pair, knn_reference
from .xla import (
    knn_scan, map_query_blocks, plan_tiles, running_top_k, scan_tiles, streamed_top_k,
    with_row_count)

__all__ = ["check_pair", "knn", "knn_pallas", "knn_reference", "knn_scan", "knn_search",
           "map_query_blocks", "plan_tiles", "running_top_k", "scan_tiles", "streamed_top_k",
           "with_row_count"]

# Metrics the fused kernel ranks (cosine arrives normalised, as inner products).
_KERNEL_METRICS = {"l2": "l2", "ip": "ip", "cosine": "ip"}


def knn_search(xq, xb, k: int, metric: str, p: float = 2.0, *, xb_sqnorms=None,
               xb_valid=None, n_rows=None, backend: str = "auto"):
    """`knn_scan`'s contract (same arguments and results) on the chosen backend. Metrics
    other than l2 / ip / cosine always take the XLA path."""
    kernel_metric = _KERNEL_METRICS.get(metric)
    if kernel_metric is None:
        backend = "xla"

    def xla(xq, xb, xb_sqnorms, xb_valid, n_rows):
        return knn_scan(xq, xb, k, metric, p, xb_sqnorms=xb_sqnorms, xb_valid=xb_valid,
                        n_rows=n_rows)

    def pallas(xq, xb, xb_sqnorms, xb_valid, n_rows, interpret):
        return knn_pallas(xq, xb, k, kernel_metric, xb_sqnorms=xb_sqnorms,
                          xb_valid=with_row_count(xb, xb_valid, n_rows), interpret=interpret)

    return choose("knn", backend, xla, pallas, xq, xb, xb_sqnorms, xb_valid, n_rows)


@functools.partial(jax.jit, static_argnames=("k", "metric", "p", "backend"))
def _knn_jit(xq, xb, k, metric, p, backend="auto"):
    if metric == "cosine":
        xq, xb = normalize_L2(xq), normalize_L2(xb)
    return knn_search(xq, xb, k, metric, p, backend=backend)


def knn(xq, xb, k: int, metric: str = "l2", p: float = 2.0, *, backend: str | None = None):
    """Exact brute-force k-NN of xq among xb under any metric (FAISS `knn`).

    Streams xb in tiles: memory stays bounded for any database size.
    Returns (distances (nq, k) float32, indices (nq, k) int32). backend: "auto" | "xla" |
    "pallas", see `jann.ops.backend` (l2 / ip / cosine have a Pallas kernel).
    """
    xq, xb = check_pair(xq, xb)
    return _knn_jit(xq, xb, check_k(k), canonical_metric(metric), float(p),
                    resolve_backend(backend))
