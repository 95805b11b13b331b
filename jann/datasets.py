"""Datasets: the small real dataset shipped with jann, and exact ground truth."""

from __future__ import annotations

import importlib.resources

import numpy as np

__all__ = ["load_embedded", "exact_knn"]


def load_embedded() -> dict:
    """Fashion-MNIST, 20000 base and 1000 query images pooled to 14x14 (196-d, float32).

    See jann/data/README.md for provenance and license.
    """
    ref = importlib.resources.files("jann.data") / "fashion_mnist_14x14.npz"
    with ref.open("rb") as f, np.load(f) as data:
        return {"name": "fashion-mnist-14x14", "metric": "l2",
                "base": data["base"].astype(np.float32),
                "queries": data["queries"].astype(np.float32)}


def exact_knn(xq, xb, k: int, metric: str = "l2", block: int = 256):
    """Exact k-NN in float64 numpy (the test oracle), for l2 and ip; ties by lower id."""
    xq = np.asarray(xq, np.float64)
    xb = np.asarray(xb, np.float64)
    k_eff = min(k, xb.shape[0])
    out_d = np.full((xq.shape[0], k), np.inf if metric == "l2" else -np.inf)
    out_i = np.full((xq.shape[0], k), -1, np.int64)
    xb_norms = (xb * xb).sum(1)
    for s in range(0, xq.shape[0], block):
        q = xq[s:s + block]
        if metric == "l2":
            scores = (q * q).sum(1)[:, None] + xb_norms[None] - 2 * q @ xb.T
            keyed = scores
        elif metric == "ip":
            scores = q @ xb.T
            keyed = -scores
        else:
            raise ValueError(f"exact_knn supports l2 and ip, got {metric}")
        order = np.argsort(keyed, axis=1, kind="stable")[:, :k_eff]
        out_i[s:s + block, :k_eff] = order
        out_d[s:s + block, :k_eff] = np.take_along_axis(scores, order, 1)
    return out_d, out_i
