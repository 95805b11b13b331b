"""k-means (FAISS `Clustering` / `Kmeans`): the trainer of IVF coarse quantizers and PQ.

FAISS's algorithm and defaults: subsample to `max_points_per_centroid * k` points, pick
k distinct training points at random (or k-means++), then `niter` Lloyd iterations;
empty clusters are re-seeded by splitting a large one (a donor drawn with probability
proportional to its size - 1; both centroids nudged apart by a relative 1/1024), and
`nredo` restarts keep the lowest objective. Spherical mode assigns by inner product and
renormalises the centroids, as `faiss.Kmeans(..., spherical=True)` does.

Each iteration is one jitted step: assignment streams the points through
`ops.knn_scan` (k = 1), so memory stays bounded by a tile of distances whatever n is,
and the update is a `segment_sum`. The Python loop around it reports progress.
"""

from __future__ import annotations

import functools
import time
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jann._inputs import as_vectors, check_finite
from jann.api import add
from jann.errors import InvalidInputError
from jann.flat import FlatIndex
from jann.ops.distances import normalize_L2
from jann.ops.knn import knn_scan

__all__ = ["KMeansResult", "Kmeans", "assign", "check_training_points", "iterate", "kmeans",
           "lloyd_step", "update_centroids"]

_SPLIT_EPS = 1.0 / 1024.0


def check_training_points(n: int, k: int, what: str, min_points_per_centroid: int = 39,
                          stacklevel: int = 3) -> None:
    """Refuse fewer than k points; warn below FAISS's `min_points_per_centroid` * k."""
    if n < k:
        raise InvalidInputError(f"{what} needs at least {k} training points (one per "
                                f"centroid), got {n}")
    if n < k * min_points_per_centroid:
        warnings.warn(f"{what}: {n} training points for {k} centroids; FAISS advises at "
                      f"least {k * min_points_per_centroid}", stacklevel=stacklevel)


class KMeansResult(NamedTuple):
    centroids: jax.Array      # (k, d) float32
    objective: list           # per iteration: sum of squared distances (sum of IPs if spherical)


@functools.partial(jax.jit, static_argnames=("spherical",))
def _assign(x, centroids, spherical=False):
    metric = "ip" if spherical else "l2"
    dist, labels = knn_scan(x, centroids, 1, metric)
    return dist[:, 0], labels[:, 0]


def assign(x, centroids, spherical: bool = False):
    """Nearest centroid of each row: (distance (n,) float32, label (n,) int32).

    Distances are squared L2 (inner products when spherical). Streamed in tiles.
    """
    return _assign(jnp.asarray(x, jnp.float32), jnp.asarray(centroids, jnp.float32),
                   spherical=spherical)


def _split_empty_clusters(centroids, counts, key):
    """Re-seed each empty cluster from a donor drawn with p ~ size - 1 (FAISS's rule)."""
    k, d = centroids.shape
    signs = jnp.where(jnp.arange(d) % 2 == 0, 1.0, -1.0) * _SPLIT_EPS

    def fix(ci, state):
        cents, cnt, key = state
        key, sub = jax.random.split(key)

        def split(args):
            cents, cnt = args
            # jax.random.choice's draw, written out: its searchsorted loop compiled in
            # 0.15 s of the 0.43 s of this function
            weight = jnp.cumsum(jnp.maximum(cnt - 1, 0).astype(jnp.float32))
            r = weight[-1] * (1 - jax.random.uniform(sub, (), jnp.float32))
            donor = jnp.minimum(jnp.sum(weight < r, dtype=jnp.int32), k - 1)
            base = cents[donor]
            cents = cents.at[ci].set(base * (1 + signs)).at[donor].set(base * (1 - signs))
            half = cnt[donor] // 2
            return cents, cnt.at[ci].set(half).at[donor].add(-half)

        cents, cnt = jax.lax.cond(cnt[ci] == 0, split, lambda a: a, (cents, cnt))
        return cents, cnt, key

    centroids, counts, _ = jax.lax.fori_loop(0, k, fix, (centroids, counts, key))
    return centroids


def update_centroids(centroids, sums, counts, key, spherical: bool):
    """The Lloyd update from per-cluster sums (k, d) and counts (k,): means, empty
    clusters split, renormalised if spherical. Separate from the assignment so that a
    distributed k-means (`jann.sharding.kmeans_sharded`) can reduce sums and counts
    across devices first and then apply exactly the same update."""
    means = sums / jnp.maximum(counts, 1)[:, None].astype(jnp.float32)
    new = jnp.where((counts > 0)[:, None], means, centroids)
    new = jax.lax.cond(jnp.any(counts == 0),
                       lambda c: _split_empty_clusters(c, counts, key), lambda c: c, new)
    return normalize_L2(new) if spherical else new


@functools.partial(jax.jit, static_argnames=("spherical",))
def lloyd_step(x, centroids, key, spherical):
    """One Lloyd iteration from given centroids: (new centroids, objective, #empty split).

    Public so that codecs can refine existing centroids (PQ inside OPQ training)."""
    dist, labels = _assign(x, centroids, spherical)
    k = centroids.shape[0]
    sums = jax.ops.segment_sum(x, labels, num_segments=k)
    counts = jnp.bincount(labels, length=k)
    new = update_centroids(centroids, sums, counts, key, spherical)
    return new, jnp.sum(dist), jnp.sum(counts == 0)


@functools.partial(jax.jit, static_argnames=("k",))
def _kmeans_pp(x, key, k):
    """k-means++ seeding: each next centroid drawn with probability ~ D(x)^2."""
    n = x.shape[0]
    first = jax.random.randint(key, (), 0, n)
    centroids = jnp.zeros((k, x.shape[1]), jnp.float32).at[0].set(x[first])
    d2 = jnp.sum((x - x[first]) ** 2, axis=1)

    def body(i, state):
        cents, d2, key = state
        key, sub = jax.random.split(key)
        pick = jax.random.choice(sub, n, p=d2 / jnp.maximum(d2.sum(), 1e-30))
        cents = cents.at[i].set(x[pick])
        return cents, jnp.minimum(d2, jnp.sum((x - x[pick]) ** 2, axis=1)), key

    centroids, _, _ = jax.lax.fori_loop(1, k, body, (centroids, d2, key))
    return centroids


# The steps before the iterations are jitted: run eagerly they were a dozen small
# programs, each compiled in a fresh process (0.6-1 s of a first training).
@functools.partial(jax.jit, static_argnames=("keep", "spherical"))
def _training_sample(x, key, keep: int, spherical: bool):
    """(the rows k-means trains on, the key left): `keep` of them drawn without
    replacement (kept in their order) when x has more, L2-normalised when spherical."""
    key_sample, key = jax.random.split(key)
    x = jnp.asarray(x, jnp.float32)
    if keep < x.shape[0]:
        x = x[jnp.sort(distinct_positions(key_sample, x.shape[0], keep))]
    return (normalize_L2(x) if spherical else x), key


def distinct_positions(key, n: int, k: int):
    """k distinct positions in [0, n), drawn uniformly: those of the k largest of n
    uniform draws (a permutation's shuffle sorts several times: 1M -> 262,144 took
    0.66 s and compiled in 0.29 s, this 0.17 s and 0.15 s)."""
    return jax.lax.top_k(jax.random.uniform(key, (n,)), k)[1]


_split3 = jax.jit(lambda key: tuple(jax.random.split(key, 3)))


@functools.partial(jax.jit, static_argnames=("k",))
def _random_rows(x, key, k: int):
    return x[distinct_positions(key, x.shape[0], k)]


def kmeans(x, k: int, *, key, niter: int = 25, nredo: int = 1, spherical: bool = False,
           init: str = "random", max_points_per_centroid: int = 256,
           min_points_per_centroid: int = 39, verbose: bool = False) -> KMeansResult:
    """Cluster the rows of x (n, d) into k centroids (FAISS defaults).

    `key` (a jax.random key) drives subsampling, initialisation and empty-cluster splits:
    the same key and data give the same centroids. Fewer than k points is an error;
    fewer than `min_points_per_centroid * k` a warning (as FAISS).
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise InvalidInputError(f"k must be a positive int, got {k!r}")
    if init not in ("random", "kmeans++"):
        raise InvalidInputError(f"init must be 'random' or 'kmeans++', got {init!r}")
    if niter < 0 or nredo < 1:
        raise InvalidInputError(f"need niter >= 0 and nredo >= 1, got {niter}, {nredo}")
    if key is None:
        raise InvalidInputError("kmeans needs an explicit key=jax.random.key(...)")
    x = as_vectors(x, None, "training vectors")
    check_finite(x, "training vectors")
    n = x.shape[0]
    check_training_points(n, k, "k-means", min_points_per_centroid)
    x, key = _training_sample(x, key, min(n, k * max_points_per_centroid), spherical)
    best = None
    for redo in range(nredo):
        key, key_init, key_iter = _split3(key)
        if init == "kmeans++":
            centroids = _kmeans_pp(x, key_init, k)
        else:
            centroids = _random_rows(x, key_init, k)
        centroids, history = iterate(
            lambda c, sub: lloyd_step(x, c, sub, spherical), centroids, key_iter, niter,
            verbose and f"k-means redo {redo}")
        final = history[-1] if history else float(_assign(x, centroids, spherical)[0].sum())
        better = best is None or (final > best[0] if spherical else final < best[0])
        if better:
            best = (final, centroids, history)
    return KMeansResult(best[1], best[2])


def iterate(step, centroids, key, niter: int, label: str | bool = False):
    """niter Lloyd iterations `step(centroids, key) -> (centroids, objective, n_empty)`,
    each with a fresh subkey: (centroids, objective history). With a label, one progress
    line per iteration."""
    history, start = [], time.perf_counter()
    for it in range(niter):
        key, sub = jax.random.split(key)
        centroids, objective, n_empty = step(centroids, sub)
        history.append(float(objective))
        if label:
            print(f"  {label} iter {it + 1}/{niter}: objective {history[-1]:.6g}, "
                  f"{int(n_empty)} empty clusters split, {time.perf_counter() - start:.1f} s",
                  flush=True)
    return centroids, history


class Kmeans:
    """FAISS-like convenience object: `Kmeans(d, k).train(x)`, then `.centroids`,
    `.obj`, `.assign(x)`, and `.index`: a Flat index over the centroids (L2, or inner
    product when spherical; empty before training), for `jann.search(km.index, x, k)`.
    Holds results on the host side; the functional form is `jann.kmeans`."""

    def __init__(self, d: int, k: int, *, niter: int = 25, nredo: int = 1,
                 spherical: bool = False, init: str = "random", seed: int = 1234,
                 max_points_per_centroid: int = 256, verbose: bool = False):
        self.d, self.k = d, k
        self.options = dict(niter=niter, nredo=nredo, spherical=spherical, init=init,
                            max_points_per_centroid=max_points_per_centroid, verbose=verbose)
        self.seed = seed
        self.centroids = None
        self.obj = []

    def train(self, x):
        x = as_vectors(x, self.d, "training vectors")
        result = kmeans(x, self.k, key=jax.random.key(self.seed), **self.options)
        self.centroids = np.asarray(result.centroids)
        self.obj = result.objective
        return self.obj[-1] if self.obj else None

    @property
    def index(self):
        empty = FlatIndex.create(self.d, "ip" if self.options["spherical"] else "l2")
        return empty if self.centroids is None else add(empty, self.centroids)

    def assign(self, x):
        if self.centroids is None:
            from jann.errors import NotTrainedError
            raise NotTrainedError("Kmeans.assign before Kmeans.train")
        dist, labels = assign(as_vectors(x, self.d, "x"), self.centroids,
                              self.options["spherical"])
        return dist, labels
