"""k-means against faiss.Kmeans on real data, and its edge cases."""

import faiss
import jax
import numpy as np
import pytest

import jann
from jann.kmeans import assign


@pytest.fixture(scope="module")
def x(fmnist):
    return fmnist["base"][:6000]


def test_objective_within_1_percent_of_faiss(x):
    ours = jann.kmeans(x, 64, key=jax.random.key(0), niter=20)
    ref = faiss.Kmeans(x.shape[1], 64, niter=20, seed=1)
    ref.train(x)
    assert len(ours.objective) == 20
    assert ours.objective[-1] <= 1.01 * ref.obj[-1]
    # the objective is the assignment cost of the returned centroids (up to one update)
    dist, _ = assign(x, ours.centroids)
    assert float(dist.sum()) <= ours.objective[-1] * 1.001


def test_same_key_same_centroids_and_kmeanspp(x):
    a = jann.kmeans(x, 32, key=jax.random.key(3), niter=5)
    b = jann.kmeans(x, 32, key=jax.random.key(3), niter=5)
    np.testing.assert_array_equal(np.asarray(a.centroids), np.asarray(b.centroids))
    pp = jann.kmeans(x, 32, key=jax.random.key(3), niter=5, init="kmeans++")
    rnd = jann.kmeans(x, 32, key=jax.random.key(3), niter=0)
    assert pp.objective[-1] < float(assign(x, rnd.centroids)[0].sum())


def test_nredo_keeps_the_best(x):
    # The first restart of nredo=3 is the nredo=1 run (same key path): best-of-3 <= it.
    single = jann.kmeans(x, 16, key=jax.random.key(0), niter=3)
    redo = jann.kmeans(x, 16, key=jax.random.key(0), niter=3, nredo=3)
    assert redo.objective[-1] <= single.objective[-1]


def test_spherical_centroids_are_unit_norm(x):
    res = jann.kmeans(x, 16, key=jax.random.key(0), niter=5, spherical=True)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(res.centroids), axis=1), 1, rtol=1e-5)


def test_empty_clusters_are_split(rng):
    # 6 distinct points repeated: with k=10 random init picks duplicates, so some clusters
    # start empty and must be re-seeded from large ones.
    base = rng.standard_normal((6, 4)).astype(np.float32) * 10
    x = np.repeat(base, 50, axis=0)
    res = jann.kmeans(x, 10, key=jax.random.key(0), niter=10, min_points_per_centroid=1)
    cents = np.asarray(res.centroids)
    assert np.isfinite(cents).all() and len(np.unique(cents.round(3), axis=0)) == 10
    assert res.objective[-1] < 1.0  # every distinct point has a centroid on it


def test_subsampling_to_max_points_per_centroid(x):
    res = jann.kmeans(x, 8, key=jax.random.key(0), niter=2, max_points_per_centroid=100)
    assert res.centroids.shape == (8, x.shape[1])


def test_kmeans_object_like_faiss(x):
    km = jann.Kmeans(x.shape[1], 8, niter=4, seed=5)
    with pytest.raises(jann.NotTrainedError):
        km.assign(x[:2])
    km.train(x)
    assert km.centroids.shape == (8, x.shape[1]) and len(km.obj) == 4
    _, labels = km.assign(x[:10])
    assert labels.shape == (10,)
    # km.index: the centroids in a Flat index (FAISS's km.index.search(x, 1))
    assert jann.ntotal(jann.Kmeans(x.shape[1], 8).index) == 0
    _, nearest = jann.search(km.index, x[:10], 1)
    np.testing.assert_array_equal(np.asarray(nearest)[:, 0], np.asarray(labels))
    spherical = jann.Kmeans(x.shape[1], 8, niter=2, spherical=True)
    spherical.train(x)
    assert spherical.index.metric == "ip" and jann.ntotal(spherical.index) == 8


def test_bad_input(x):
    with pytest.raises(jann.InvalidInputError, match="at least"):
        jann.kmeans(x[:5], 10, key=jax.random.key(0))
    with pytest.raises(jann.InvalidInputError, match="key"):
        jann.kmeans(x, 4, key=None)
    with pytest.raises(jann.InvalidInputError, match="init"):
        jann.kmeans(x, 4, key=jax.random.key(0), init="best")
    with pytest.warns(UserWarning, match="advises"):
        jann.kmeans(x[:100], 10, key=jax.random.key(0), niter=1)
