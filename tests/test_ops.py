"""jann.ops against numpy float64 oracles and faiss-cpu."""

import faiss
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jann
from jann import ops

from _oracle import data_for, knn as oracle_knn, pairwise as oracle_pairwise
from conftest import assert_knn_equal

ALL_METRICS = ops.METRICS
FAISS_METRICS = {
    "l1": faiss.METRIC_L1, "linf": faiss.METRIC_Linf, "lp": faiss.METRIC_Lp,
    "canberra": faiss.METRIC_Canberra, "braycurtis": faiss.METRIC_BrayCurtis,
    "jensenshannon": faiss.METRIC_JensenShannon, "jaccard": faiss.METRIC_Jaccard,
    "nan_euclidean": faiss.METRIC_NaNEuclidean, "gower": faiss.METRIC_GOWER,
}


@pytest.mark.parametrize("metric", ALL_METRICS)
def test_pairwise_matches_numpy_oracle(metric, rng):
    x, y = data_for(metric, rng, 37, 24), data_for(metric, rng, 53, 24)
    want = oracle_pairwise(x, y, metric, p=3.0)
    for got in (ops.pairwise_distances(x, y, metric, p=3.0),
                ops.pairwise_distances_reference(x, y, metric, p=3.0)):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_rows_first_product_matches_oracle_under_vmap_and_jit(metric, rng):
    """The IVF scan's products with the rows as the left operand (a transpose behind an
    optimisation barrier), batched as the scan's work items are."""
    from jann.ops.distances import pairwise_scores
    x, y = rng.standard_normal((3, 4, 24)), rng.standard_normal((3, 40, 24))
    got = jax.jit(jax.vmap(lambda a, b: pairwise_scores(a, b, metric, rows_first=True)))(
        x.astype(np.float32), y.astype(np.float32))
    want = np.stack([oracle_pairwise(a, b, metric) for a, b in zip(x, y)])
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("metric", sorted(FAISS_METRICS))
def test_pairwise_matches_faiss(metric, rng):
    x, y = data_for(metric, rng, 20, 16), data_for(metric, rng, 30, 16)
    want = faiss.pairwise_distances(x, y, FAISS_METRICS[metric], 3.0)
    got = np.asarray(ops.pairwise_distances(x, y, metric, p=3.0))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_zero_coordinates_follow_scipy_not_nan():
    x = np.array([[0.0, 1.0]], np.float32)
    y = np.array([[0.0, 2.0]], np.float32)
    assert np.isfinite(np.asarray(ops.pairwise_distances(x, y, "canberra"))).all()
    assert np.isfinite(np.asarray(ops.pairwise_distances(x, y, "jensenshannon"))).all()


def test_normalize_L2_matches_faiss(rng):
    x = rng.standard_normal((10, 8)).astype(np.float32)
    x[3] = 0
    want = x.copy()
    faiss.normalize_L2(want)
    np.testing.assert_allclose(np.asarray(ops.normalize_L2(x)), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("k", [1, 7, 100, 2500, 5000])
def test_kmin_kmax_any_k(k, rng):
    x = rng.standard_normal((3, 3000)).astype(np.float32)
    v, i = jann.kmin(x, k)
    take = min(k, 3000)
    order = np.argsort(x, axis=1, kind="stable")[:, :take]
    np.testing.assert_array_equal(np.asarray(i)[:, :take], order)
    np.testing.assert_array_equal(np.asarray(v)[:, :take], np.take_along_axis(x, order, 1))
    assert (np.asarray(i)[:, take:] == -1).all() and np.isposinf(np.asarray(v)[:, take:]).all()
    v, i = jann.kmax(x, k)
    order = np.argsort(-x, axis=1, kind="stable")[:, :take]
    np.testing.assert_array_equal(np.asarray(i)[:, :take], order)
    assert np.isneginf(np.asarray(v)[:, take:]).all()


@pytest.mark.parametrize("k,width", [(10, 160), (40, 64), (10, 48)])  # 48: not in blocks
def test_selection_over_gathered_rows_equals_materialised(rng, k, width):
    from jann.ops.topk import smallest_k_gathered, smallest_k_padded

    table = rng.integers(0, 50, (30, width)).astype(np.float32)  # ties across rows too
    table[rng.random(table.shape) < 0.3] = np.inf
    table[7] = np.inf
    rows = rng.integers(0, 30, (6, 12)).astype(np.int32)
    rows[0] = 7  # a query whose candidates are all missing
    got_v, got_i = smallest_k_gathered(jnp.asarray(table), jnp.asarray(rows), k)
    want_v, want_i = smallest_k_padded(jnp.asarray(table[rows].reshape(6, -1)), k)
    np.testing.assert_array_equal(np.asarray(got_v), np.asarray(want_v))
    np.testing.assert_array_equal(np.asarray(got_i), np.asarray(want_i))
    assert (np.asarray(got_i)[0] == -1).all()


@pytest.mark.parametrize("n", [64, 2048, 100])  # in blocks, and not
def test_nearest_is_the_first_of_equal_minima(rng, n):
    x = rng.integers(0, 3, (50, n)).astype(np.float32)  # many equal minima
    v, i = ops.smallest_k(jnp.asarray(x), 1)
    np.testing.assert_array_equal(np.asarray(i)[:, 0], np.argmin(x, axis=1))
    np.testing.assert_array_equal(np.asarray(v)[:, 0], x.min(axis=1))


def test_two_stage_selection_equals_top_k_with_ties(rng):
    x = rng.integers(0, 5, (4, 4096)).astype(np.float32)  # heavy ties
    v, i = ops.smallest_k(jnp.asarray(x), 50)
    order = np.argsort(x, axis=1, kind="stable")[:, :50]
    np.testing.assert_array_equal(np.asarray(i), order)
    np.testing.assert_array_equal(np.asarray(v), np.take_along_axis(x, order, 1))


@pytest.mark.parametrize("metric", ALL_METRICS)
def test_knn_exact_for_every_metric(metric, rng):
    xq, xb = data_for(metric, rng, 19, 12), data_for(metric, rng, 300, 12)
    ref_d, ref_i = oracle_knn(xq, xb, 10, metric, p=3.0)
    D, I = jann.knn(xq, xb, 10, metric=metric, p=3.0)
    assert D.dtype == jnp.float32 and D.shape == (19, 10)
    assert_knn_equal(D, I, ref_d, ref_i)


@pytest.mark.parametrize("n,k,tile", [(1000, 10, 128), (1000, 300, 128), (77, 100, 16),
                                      (5000, 1, 4096), (4097, 5, 4096), (5000, 10, 1280),
                                      (3000, 3, 1024)])
def test_knn_scan_tiling_edges(n, k, tile, rng):
    """Ragged last tile, k > tile, k > n: the streamed scan equals the full-matrix oracle."""
    xq = rng.standard_normal((33, 8)).astype(np.float32)
    xb = rng.standard_normal((n, 8)).astype(np.float32)
    D, I = ops.knn_scan(jnp.asarray(xq), jnp.asarray(xb), k, "l2", tile=tile, query_block=16)
    ref_d, ref_i = oracle_knn(xq, xb, k, "l2")
    assert_knn_equal(D, I, ref_d, ref_i)
    D2, I2 = ops.knn_reference(xq, xb, k)
    assert_knn_equal(D2, I2, ref_d, ref_i)


@pytest.mark.parametrize("start", ["empty", "full", "rounds"])
def test_blockwise_merge_equals_select_then_merge_with_ties(start, rng):
    """`merge_smallest_blocks` (threshold rounds, or the k best blocks when most blocks
    beat the running k-th value) gives exactly what selecting then merging gives, ties
    included: running entries first, then lower columns. "rounds": between k and 2k
    blocks beat the k-th value, so the hits take two rounds of k blocks."""
    k, n = 10, 1280
    for _ in range(10):
        x = jnp.asarray(rng.integers(0, 40, (9, n)).astype(np.float32))
        bias = jnp.asarray(rng.integers(0, 4, n).astype(np.float32))
        if start == "empty":
            values = jnp.full((9, k), jnp.inf)
        elif start == "full":
            values = jnp.asarray(np.sort(rng.integers(0, 25, (9, k)), 1).astype(np.float32))
        else:  # distinct block minima: exactly `hits` of them beat the k-th value
            x = jnp.asarray(rng.random((9, n)).astype(np.float32) * 40)
            minima = np.sort(np.min(np.asarray(x + bias).reshape(9, -1, 32), -1), 1)
            hits = rng.integers(k + 1, 2 * k, 9)
            kth = (minima[np.arange(9), hits - 1] + minima[np.arange(9), hits]) / 2
            start_values = np.minimum(np.sort(rng.random((9, k)) * 3, 1), kth[:, None])
            start_values[:, -1] = kth
            values = jnp.asarray(start_values.astype(np.float32))
        idx = jnp.asarray(rng.integers(-9, 0, (9, k)).astype(np.int32))
        got = ops.topk.merge_smallest_blocks(values, idx, x, bias, 100)
        best, cols = ops.smallest_k(x, k, bias)
        want = ops.topk.merge_smallest(values, idx, best, cols + 100, k)
        np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))
        np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))


def test_large_k_widens_tiles_until_the_blockwise_merge_applies(rng):
    """A 65-best search (a graph build's candidates) gets 16384-row tiles, where the
    blockwise merge applies, with the score block kept to 32 MiB; results stay exact."""
    from jann.ops.knn import plan_tiles
    tile, block = plan_tiles(60000, 784, "l2", 65)
    assert (tile, block) == (16384, 512)
    assert ops.topk.blockwise_merge_applies(65, tile)
    assert plan_tiles(60000, 784, "l2", 10) == (4096, 512)
    assert np.prod(plan_tiles(60000, 784, "l2", 300)) <= 1 << 23
    xq = rng.standard_normal((40, 8)).astype(np.float32)
    xb = rng.standard_normal((20000, 8)).astype(np.float32)
    D, I = ops.knn_scan(jnp.asarray(xq), jnp.asarray(xb), 40, "l2")
    assert_knn_equal(D, I, *oracle_knn(xq, xb, 40, "l2"))


def test_projected_pool_holds_the_exact_neighbours(fmnist, rng):
    """`pca_basis` finds the subspace data lie in (all the variance); on real data a pool
    of 2k rows nearest in 48 of 196 principal directions holds nearly all of the exact
    k nearest, which exact distances then rank."""
    from jann.ops.projection import pca_basis, project, projected_pool
    low = rng.standard_normal((3000, 5)) @ rng.standard_normal((5, 40))
    mean, basis, energy = pca_basis(jnp.asarray(low, jnp.float32), 2000, 5)
    assert float(energy) > 0.999
    back = np.asarray(project(low[2000:], mean, basis)) @ np.asarray(basis) + np.asarray(mean)
    np.testing.assert_allclose(back, low[2000:], atol=1e-3)  # rows past n_rows too

    xb, xq = fmnist["base"][:5000], fmnist["queries"][:200]
    mean, basis, energy = pca_basis(jnp.asarray(xb), 5000, 48)
    assert 0.9 < float(energy) < 1.0
    rows = np.asarray(projected_pool(jnp.asarray(xq), jnp.asarray(xb), 20, mean, basis))
    _, exact = oracle_knn(xq, xb, 10, "l2")
    held = np.mean([len(set(r) & set(e)) / 10 for r, e in zip(rows, exact)])
    assert held >= 0.97, held


def test_knn_scan_skips_rows_past_n_rows_inside_jit(rng):
    """n_rows (a traced count) limits the search to the leading rows, as a Flat index's
    count does; tiles past it are not computed."""
    xq = rng.standard_normal((40, 8)).astype(np.float32)
    xb = rng.standard_normal((6000, 8)).astype(np.float32)
    scan = jax.jit(lambda xq, xb, n: ops.knn_scan(xq, xb, 10, "l2", n_rows=n, tile=1280,
                                                 query_block=16))
    for count in (0, 7, 1280, 3001, 6000):
        D, I = scan(xq, xb, jnp.int32(count))
        ref_d, ref_i = oracle_knn(xq, xb[:count], 10, "l2")
        assert_knn_equal(D, I, ref_d, ref_i)


def test_map_query_blocks_skips_blocks_past_n_rows(rng):
    """Blocks past a traced row count are not computed (their rows come back zero); the
    rows before it are fn's, whatever the block cut."""
    from jann.ops.knn import map_query_blocks
    x = jnp.asarray(rng.standard_normal((100, 3)).astype(np.float32))
    calls = jax.jit(lambda x, n: map_query_blocks(lambda b: (b * 2, b[:, 0] > -99), x, 16, n))
    for n in (0, 1, 16, 17, 90, 100):
        doubled, seen = calls(x, jnp.int32(n))
        computed = -(-n // 16) * 16
        np.testing.assert_array_equal(np.asarray(doubled)[:n], 2 * np.asarray(x)[:n])
        assert np.asarray(seen)[:min(computed, 100)].all()
        assert not np.asarray(seen)[computed:].any()
        assert not np.asarray(doubled)[computed:].any()


@pytest.mark.parametrize("metric", ["l2", "l1"])
def test_knn_distances_differentiable_wrt_database(metric, rng):
    """Distances are differentiable in the database vectors too (the selection is not):
    the gradient is the metric's at the rows found."""
    xq = rng.standard_normal((5, 6)).astype(np.float32)
    xb = rng.standard_normal((300, 6)).astype(np.float32)
    _, I = ops.knn_scan(jnp.asarray(xq), jnp.asarray(xb), 4, metric)
    grad = jax.grad(lambda b: jnp.sum(ops.knn_scan(jnp.asarray(xq), b, 4, metric)[0]))(
        jnp.asarray(xb))
    want = np.zeros_like(xb)
    for q, rows in zip(xq, np.asarray(I)):
        for r in rows:
            diff = xb[r] - q
            want[r] += 2 * diff if metric == "l2" else np.sign(diff)
    np.testing.assert_allclose(np.asarray(grad), want, rtol=1e-4, atol=1e-4)


def test_knn_on_real_data_equals_ground_truth(fmnist):
    xb, xq = fmnist["base"][:5000], fmnist["queries"][:100]
    ref_d, ref_i = oracle_knn(xq, xb, 10, "l2")
    D, I = jann.knn(xq, xb, 10)
    assert_knn_equal(D, I, ref_d, ref_i, rtol=1e-5, atol=1e-2)


@pytest.mark.parametrize("keep_max", [False, True])
def test_merge_knn_results_matches_faiss(keep_max, rng):
    nshard, nq, k = 4, 6, 5
    D = np.sort(rng.standard_normal((nshard, nq, k)).astype(np.float32), axis=-1)
    if keep_max:
        D = D[..., ::-1].copy()
    I = rng.integers(0, 1000, (nshard, nq, k))
    I[1, 2, 3:] = -1  # a shard with too few results
    D[1, 2, 3:] = -np.inf if keep_max else np.inf
    want_d, want_i = faiss.merge_knn_results(D, I, keep_max=keep_max)
    got_d, got_i = jann.merge_knn_results(D, I, keep_max=keep_max)
    np.testing.assert_array_equal(np.asarray(got_d), want_d)
    np.testing.assert_array_equal(np.asarray(got_i), want_i)


def test_bucket_sort(rng):
    values = rng.integers(-1, 7, 200)
    lims, perm = jann.bucket_sort(values, 7)
    lims, perm = np.asarray(lims), np.asarray(perm)
    for b in range(7):
        np.testing.assert_array_equal(perm[lims[b]:lims[b + 1]], np.flatnonzero(values == b))
    assert lims[7] == (values >= 0).sum()


@pytest.mark.parametrize("key_bound", [7, 2**31])  # the packed sort, and the argsort past int32
def test_stable_argsort(rng, key_bound):
    from jann.ops.sorting import stable_argsort

    keys = rng.integers(0, 7, 300).astype(np.int32)
    got = np.asarray(stable_argsort(jnp.asarray(keys), key_bound))
    np.testing.assert_array_equal(got, np.argsort(keys, kind="stable"))


def test_ops_reject_bad_inputs():
    with pytest.raises(jann.UnknownMetricError, match="supported"):
        jann.knn(np.zeros((2, 3)), np.zeros((4, 3)), 1, metric="hamming-ish")
    with pytest.raises(jann.InvalidInputError, match="dimension"):
        jann.knn(np.zeros((2, 3)), np.zeros((4, 5)), 1)
    for bad_k in (0, -1, 2.5, True):
        with pytest.raises(jann.InvalidInputError, match="k must"):
            jann.knn(np.zeros((2, 3)), np.zeros((4, 3)), bad_k)
