"""numpy float64 oracles: every metric's formula written independently of jann."""

import numpy as np

SIMILARITIES = {"ip", "cosine", "jaccard", "abs_ip"}


def pairwise(x, y, metric, p=2.0):
    if metric in ("l2", "ip") and len(x) * len(y) * np.shape(x)[1] > 10**7:
        # Large inputs: the float64 norm expansion (the broadcast would need GBs).
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        dots = x @ y.T
        if metric == "ip":
            return dots
        return np.maximum((x * x).sum(1)[:, None] + (y * y).sum(1)[None] - 2 * dots, 0)
    x = np.asarray(x, np.float64)[:, None, :]
    y = np.asarray(y, np.float64)[None, :, :]
    with np.errstate(all="ignore"):
        if metric == "l2":
            return ((x - y) ** 2).sum(-1)
        if metric == "ip":
            return (x * y).sum(-1)
        if metric == "cosine":
            xn = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-30)
            yn = y / np.maximum(np.linalg.norm(y, axis=-1, keepdims=True), 1e-30)
            return (xn * yn).sum(-1)
        if metric == "abs_ip":
            return np.abs((x * y).sum(-1))
        if metric == "l1":
            return np.abs(x - y).sum(-1)
        if metric == "linf":
            return np.abs(x - y).max(-1)
        if metric == "lp":
            return (np.abs(x - y) ** p).sum(-1)
        if metric == "canberra":
            return np.nan_to_num(np.abs(x - y) / (np.abs(x) + np.abs(y))).sum(-1)
        if metric == "braycurtis":
            return np.abs(x - y).sum(-1) / np.abs(x + y).sum(-1)
        if metric == "jensenshannon":
            m = 0.5 * (x + y)
            kl = lambda a: np.where(a > 0, a * np.log(np.where(a > 0, a, 1) / m), 0.0)
            return 0.5 * (kl(x) + kl(y)).sum(-1)
        if metric == "jaccard":
            return np.minimum(x, y).sum(-1) / np.maximum(x, y).sum(-1)
        if metric == "nan_euclidean":
            diff = x - y
            present = ~np.isnan(diff)
            return (np.where(present, diff, 0) ** 2).sum(-1) * x.shape[-1] / present.sum(-1)
        if metric == "gower":
            present = ~(np.isnan(x) | np.isnan(y))
            numeric = (x >= 0) & (y >= 0)
            term = np.where(numeric, np.abs(x - y), (x != y).astype(float))
            return np.where(present, term, 0).sum(-1) / present.sum(-1)
    raise ValueError(metric)


def knn(xq, xb, k, metric, p=2.0):
    """Exact k-NN (ties by lower id), FAISS padding (-1, +-inf) when k > n."""
    scores = pairwise(xq, xb, metric, p) if len(xb) else np.zeros((len(xq), 0))
    sim = metric in SIMILARITIES
    keyed = np.where(np.isnan(scores), np.inf, -scores if sim else scores)
    order = np.argsort(keyed, axis=1, kind="stable")[:, :k]
    d = np.take_along_axis(scores, order, 1)
    take = order.shape[1]
    fill = -np.inf if sim else np.inf
    out_d = np.full((len(xq), k), fill)
    out_i = np.full((len(xq), k), -1)
    out_d[:, :take] = d
    out_i[:, :take] = order
    return out_d, out_i


def data_for(metric, rng, n, d):
    """Test vectors suited to a metric (positive for the log/ratio ones, codes for gower)."""
    if metric in ("canberra", "jensenshannon", "jaccard", "braycurtis"):
        return rng.random((n, d)).astype(np.float32) + 0.05
    if metric == "gower":
        x = rng.random((n, d)).astype(np.float32)
        x[:, : d // 2] = -rng.integers(1, 4, (n, d // 2))
        return x
    if metric == "nan_euclidean":
        x = rng.standard_normal((n, d)).astype(np.float32)
        x[rng.random((n, d)) < 0.2] = np.nan
        return x
    return rng.standard_normal((n, d)).astype(np.float32)
