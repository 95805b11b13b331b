"""Graph index (jann.graph): recall against numpy brute force on real data, connectivity
after updates, tombstones, filtering, checkpoints and bad input."""

import jax
import numpy as np
import pytest

import jann
from jann.datasets import exact_knn
from jann.graph import reachable

K = 10


def recall(found, gt, k=K):
    found = np.asarray(found)
    return float(np.mean([len(set(found[i, :k]) & set(gt[i, :k])) / k
                          for i in range(found.shape[0])]))


@pytest.fixture(scope="module")
def subset(fmnist):
    xb, xq = fmnist["base"][:5000], fmnist["queries"][:200]
    return xb, xq, exact_knn(xq, xb, K)[1]


@pytest.fixture(scope="module")
def hnsw16(subset):
    return jann.add(jann.index_factory(subset[0].shape[1], "HNSW16"), subset[0])


def all_reachable(index):
    n = jann.ntotal(index) + int(np.asarray(index.deleted).sum())
    reached = np.asarray(reachable(index.neighbors, index.entries, index.count))
    return reached[:n].all()


@pytest.mark.parametrize("params, floor", [
    ({"ef": 16}, 0.90), ({"ef": 64}, 0.97), ({"ef": 128, "search_width": 1}, 0.98),
    ({"ef": 64, "search_width": 3}, 0.97), ({"ef": 64, "entry": "fixed"}, 0.95),
    ({"ef": 64, "entry": "random"}, 0.96), ({"ef": 64, "gather_fraction": 1.0}, 0.97),
    ({"ef": 64, "gather_fraction": 0.25}, 0.95)])
def test_recall(subset, hnsw16, params, floor):
    _, xq, gt = subset
    _, ids = jann.search(hnsw16, xq, K, **params)
    assert recall(ids, gt) >= floor
    ids = np.asarray(ids)
    assert all(len(set(row)) == K for row in ids)  # no row returned twice


def test_results_do_not_depend_on_the_batch(subset, hnsw16):
    """Queries are regrouped into blocks by their nearest start row, and a padded batch
    skips its padding: a query's results are the same alone, in any order, in any batch."""
    _, xq, _ = subset
    d_all, i_all = jann.search(hnsw16, xq, K, ef=32)
    perm = np.random.default_rng(0).permutation(len(xq))
    d_perm, i_perm = jann.search(hnsw16, xq[perm], K, ef=32)
    np.testing.assert_array_equal(np.asarray(i_perm), np.asarray(i_all)[perm])
    np.testing.assert_array_equal(np.asarray(d_perm), np.asarray(d_all)[perm])
    for n in (1, 37):  # padded to a bucket: the padding rows are skipped
        _, ids = jann.search(hnsw16, xq[:n], K, ef=32)
        np.testing.assert_array_equal(np.asarray(ids), np.asarray(i_all)[:n])
    traced = jax.jit(lambda ix, q: jann.search(ix, q, K, ef=32))(hnsw16, xq[:37])
    np.testing.assert_array_equal(np.asarray(traced[1]), np.asarray(i_all)[:37])


def test_recall_vs_hnswlib(subset, hnsw16):
    hnswlib = pytest.importorskip("hnswlib")
    xb, xq, gt = subset
    peer = hnswlib.Index(space="l2", dim=xb.shape[1])
    peer.init_index(max_elements=len(xb), M=16, ef_construction=200, random_seed=0)
    peer.set_num_threads(1)
    peer.add_items(xb)
    peer.set_ef(64)
    theirs = recall(peer.knn_query(xq, K)[0], gt)
    ours = recall(jann.search(hnsw16, xq, K, efSearch=64)[1], gt)
    assert ours >= theirs - 0.02, (ours, theirs)


def test_graph_shape(hnsw16):
    nb = np.asarray(hnsw16.neighbors[:5000])
    assert nb.shape[1] == 32  # HNSW16: FAISS level-0 degree 2*M
    assert (nb >= 0).all() and (nb < 5000).all()
    assert not (nb == np.arange(5000)[:, None]).any()
    assert all(len(set(row)) == len(row) for row in nb[:500])
    assert all_reachable(hnsw16)


def test_compressed_storage(subset):
    xb, xq = subset[0][:2000], subset[1][:100]
    gt = exact_knn(xq, xb, K)[1]
    index = jann.index_factory(xb.shape[1], "HNSW16,SQ8")
    index = jann.add(jann.train(index, xb), xb)
    assert recall(jann.search(index, xq, K, ef=64)[1], gt) >= 0.9
    refined = jann.index_factory(xb.shape[1], "HNSW16,SQ8,RFlat")
    refined = jann.add(jann.train(refined, xb), xb)
    assert recall(jann.search(refined, xq, K, ef=64, k_factor=2)[1], gt) >= 0.95
    # FAISS's HNSW<M>_<codes> names the same IndexHNSWSQ / IndexHNSWPQ
    for joined, spec in (("HNSW16_SQ8", "HNSW16,SQ8"), ("HNSW32_PQ14", "HNSW32,PQ14")):
        a, b = (jann.index_factory(xb.shape[1], s) for s in (joined, spec))
        assert a.describe() == spec and jax.tree.structure(a) == jax.tree.structure(b)
        assert jax.tree.map(lambda u, v: u.shape == v.shape, a, b) == \
            jax.tree.map(lambda u: True, a)


def test_updates_keep_graph_connected_and_hide_removed(fmnist):
    xb, xq = fmnist["base"][:3000], fmnist["queries"][:100]
    index = jann.add(jann.index_factory(xb.shape[1], "HNSW8"), xb[:1500])
    index = jann.add(index, xb[1500:2600])
    index = jann.add(index, xb[2600:2603])  # a tiny add: linked locally, each row pointed to
    nb = np.asarray(index.neighbors)[:2603]
    assert np.isin(np.arange(2600, 2603), nb[nb >= 0]).all()
    removed = np.arange(0, 2603, 7)
    index, n = jann.remove_ids(index, removed)
    assert n == len(removed) and jann.ntotal(index) == 2603 - len(removed)
    index = jann.add(index, xb[2603:])
    assert all_reachable(index)
    _, ids = jann.search(index, xq, K, ef=64)
    ids = np.asarray(ids)
    assert not np.isin(ids, removed).any()
    shrunk = jann.shrink_to_fit(index)  # tombstoned rows keep their storage until compact
    assert shrunk.capacity >= int(index.count)
    np.testing.assert_array_equal(np.asarray(jann.search(shrunk, xq, K, ef=64)[1]), ids)
    keep = np.setdiff1d(np.arange(3000), removed)
    _, gt = exact_knn(xq, xb[keep], K)
    assert recall(ids, keep[gt]) >= 0.9
    with pytest.raises(jann.IdNotFoundError):
        jann.reconstruct(index, [int(removed[3])])

    compacted = jann.graph.compact(index)
    assert jann.ntotal(compacted) == len(keep) and int(compacted.count) == len(keep)
    assert all_reachable(compacted)
    _, ids2 = jann.search(compacted, xq, K, ef=64)
    assert not np.isin(np.asarray(ids2), removed).any()
    assert recall(ids2, keep[gt]) >= 0.9
    new = jann.add(compacted, xb[:2])  # sequential ids continue after the largest given
    assert np.asarray(new.ids)[len(keep):len(keep) + 2].tolist() == [3000, 3001]


def test_adds_past_the_exact_build_search_the_graph(fmnist, monkeypatch):
    """Once the graph holds EXACT_BUILD_MAX rows, adds find their candidates by searching
    it (plus exact neighbours inside the batch), INSERT_BATCH rows at a time: recall and
    connectivity hold, and within-batch neighbours are found (a batch of near-duplicates
    links to itself)."""
    monkeypatch.setattr(jann.graph.building, "EXACT_BUILD_MAX", 1024)
    monkeypatch.setattr(jann.graph.building, "INSERT_BATCH", 512)
    jax.clear_caches()  # the add was traced with the real bounds elsewhere
    try:
        xb, xq = fmnist["base"][:4000], fmnist["queries"][:100]
        index = jann.add(jann.index_factory(xb.shape[1], "HNSW8"), xb[:3000])  # from empty
        assert all_reachable(index)
        index = jann.add(index, xb[3000:])
        assert all_reachable(index)
        _, gt = exact_knn(xq, xb, K)
        assert recall(jann.search(index, xq, K, ef=64)[1], gt) >= 0.9
        twins = jann.add(index, np.repeat(xb[:1], 20, 0) + np.arange(20)[:, None] * 1e-3)
        nb = np.asarray(twins.neighbors[4000:4020])
        assert (nb >= 4000).sum(1).min() >= 8  # each twin's list holds other twins
    finally:
        jax.clear_caches()


def test_large_adds_of_high_dimensional_rows_filter_candidates_by_projection(
        subset, hnsw16, monkeypatch):
    """Large adds of vectors whose variance lies mostly in a few principal directions take
    their candidates from a pool found in that projection, ranked by exact distance:
    recall and connectivity hold. Data without such directions (isotropic noise) keep the
    exact candidates. (The bounds are lowered so 196-d data take the path.)"""
    xb, xq, gt = subset
    noise = np.random.default_rng(0).standard_normal((2000, xb.shape[1])).astype(np.float32)

    def build(x):
        return jann.add(jann.index_factory(x.shape[1], "HNSW16"), x)

    exact_noise = build(noise)
    monkeypatch.setattr(jann.graph.building, "PROJECTION_DIMS", 48)
    monkeypatch.setattr(jann.graph.building, "PROJECTION_MIN_D", 64)
    monkeypatch.setattr(jann.graph.building, "PROJECTION_MIN_QUERIES", 1024)
    jax.clear_caches()  # the add was traced with the real bounds
    try:
        projected = build(xb)
        assert (np.asarray(projected.neighbors) != np.asarray(hnsw16.neighbors)).any()
        assert all_reachable(projected)
        assert recall(jann.search(projected, xq, K, ef=64)[1], gt) >= 0.97
        np.testing.assert_array_equal(np.asarray(build(noise).neighbors),
                                      np.asarray(exact_noise.neighbors))
    finally:
        jax.clear_caches()


def test_selector_filters_during_search(subset, hnsw16):
    xb, xq, _ = subset
    allowed = np.arange(1000, 1500)  # 10% of the rows
    _, ids = jann.search(hnsw16, xq, K, ef=64, selector=jann.IDSelectorRange(1000, 1500))
    ids = np.asarray(ids)
    assert np.isin(ids[ids >= 0], allowed).all()
    _, gt = exact_knn(xq, xb[allowed], K)
    assert recall(ids, allowed[gt]) >= 0.8


def test_reconstruct_and_idmap(subset):
    xb = subset[0][:600]
    index = jann.add(jann.index_factory(xb.shape[1], "IDMap,HNSW8"), xb,
                     ids=np.arange(600) * 10 + 5)
    np.testing.assert_array_equal(np.asarray(jann.reconstruct(index, [5, 55])), xb[[0, 5]])
    _, ids = jann.search(index, xb[:20], 1, ef=32)
    assert np.asarray(ids)[:, 0].tolist() == list(np.arange(20) * 10 + 5)


def test_save_load_keeps_results(subset, hnsw16, tmp_path):
    _, xq, _ = subset
    before = jann.search(hnsw16, xq, K, ef=32)
    jann.save(hnsw16, tmp_path / "g")
    loaded = jann.load(tmp_path / "g")
    after = jann.search(loaded, xq, K, ef=32)
    np.testing.assert_array_equal(np.asarray(before[1]), np.asarray(after[1]))
    np.testing.assert_array_equal(np.asarray(before[0]), np.asarray(after[0]))
    assert loaded.describe() == "HNSW16"


def test_search_inside_jit(subset, hnsw16):
    _, xq, _ = subset
    eager = jann.search(hnsw16, xq[:16], K, ef=32)[1]
    jitted = jax.jit(lambda ix, q: jann.search(ix, q, K, ef=32))(hnsw16, xq[:16])[1]
    np.testing.assert_array_equal(np.asarray(eager), np.asarray(jitted))


def test_ef_below_k_is_clamped(subset, hnsw16):
    _, xq, _ = subset
    _, small = jann.search(hnsw16, xq, K, ef=2)
    _, clamped = jann.search(hnsw16, xq, K, ef=K)
    np.testing.assert_array_equal(np.asarray(small), np.asarray(clamped))
    assert (np.asarray(small) >= 0).all()


def test_bad_input(fmnist):
    xb = fmnist["base"][:40]
    index = jann.index_factory(xb.shape[1], "HNSW32")
    with pytest.raises(jann.InvalidInputError, match="graph_degree"):
        jann.add(index, xb)  # 40 rows cannot have 64 distinct neighbours
    with pytest.raises(jann.InvalidInputError, match="graph_degree"):
        jann.add(index, xb[:0])  # empty build set
    D, ids = jann.search(index, xb[:3], 5)  # empty index: nothing found
    assert (np.asarray(ids) == -1).all() and np.isinf(np.asarray(D)).all()
    small = jann.add(jann.index_factory(xb.shape[1], "CAGRA8"), xb)
    for bad in ({"ef": 0}, {"search_width": -1}, {"entry": "medoid"}, {"gather_fraction": 0},
                {"ef": 8, "efSearch": 9}, {"nprobe": 4}):
        with pytest.raises(jann.InvalidInputError):
            jann.search(small, xb[:2], 3, **bad)
    with pytest.raises(jann.FactoryStringError):
        jann.index_factory(16, "CAGRA16_8")  # intermediate < degree
    with pytest.raises(jann.InvalidInputError):
        jann.range_search(small, xb[:2], 1.0)


def test_streamed_single_row_adds_link_locally(fmnist, compile_counter, monkeypatch):
    """Adds of a few rows find their candidates by searching the graph and rewrite only
    the lists they touch (jann.graph.edges.local_reverse_edges): each row is found,
    recall matches the graph built in one add, reachability is restored every
    REPAIR_PERIOD rows, and the jitted add compiles once."""
    monkeypatch.setattr(jann.graph.building, "REPAIR_PERIOD", 400)
    monkeypatch.setattr(jann.graph.building, "STREAM_EXACT_MAX", 1024)  # search for them
    jax.clear_caches()
    try:
        xb, xq = fmnist["base"][:2400], fmnist["queries"][:100]
        index = jann.add(jann.index_factory(xb.shape[1], "HNSW8"), xb[:2000])
        index = jann.reserve(index, 400)
        add = jax.jit(jann.add, donate_argnums=0)
        index = add(index, xb[2000:2001])
        before = compile_counter.count
        for i in range(2001, 2400):
            index = add(index, xb[i:i + 1])
        assert compile_counter.count == before
        jann.check(index)
        assert all_reachable(index)  # the repair ran at row 2400
        pointed = np.zeros(2400, bool)
        nb = np.asarray(index.neighbors)[:2400]
        pointed[nb[nb >= 0]] = True
        assert pointed[2000:].all()  # every streamed row got an in-edge
        _, gt = exact_knn(xq, xb, K)
        streamed = recall(jann.search(index, xq, K, ef=64)[1], gt)
        at_once = jann.add(jann.index_factory(xb.shape[1], "HNSW8"), xb)
        assert streamed >= recall(jann.search(at_once, xq, K, ef=64)[1], gt) - 0.02
        _, own = jann.search(index, xb[2000:2400:10], 1, ef=64)
        assert np.mean(np.asarray(own)[:, 0] == np.arange(2000, 2400, 10)) >= 0.95
    finally:
        jax.clear_caches()
