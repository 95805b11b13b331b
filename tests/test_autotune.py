"""jann.autotune / search_parameter_space / explore, on the embedded Fashion-MNIST subset.

Recall is recomputed here with plain numpy set intersections against the float64 oracle;
nothing asserts on timings (only on how measured times are used).
"""

import dataclasses
import itertools

import jax
import numpy as np
import pytest

import jann
from jann import datasets
from jann.autotune import (
    GRAPH_EF_VALUES,
    K_FACTOR_VALUES,
    OperatingPoint,
    explore,
    nprobe_values,
    pareto_frontier,
    recall_at_k,
)

K = 10
NQ = 200


@pytest.fixture(scope="module")
def data():
    d = datasets.load_embedded()
    xb, xq = d["base"][:10000], d["queries"][:NQ]
    gt = datasets.exact_knn(xq, xb, K)[1]
    return xb, xq, gt


@pytest.fixture(scope="module")
def ivf(data):
    xb, _, _ = data
    index = jann.train(jann.index_factory(xb.shape[1], "IVF32,Flat"), xb, key=jax.random.key(0))
    return jann.add(index, xb)


@pytest.fixture(scope="module")
def tuned(ivf, data):
    _, xq, gt = data
    return jann.autotune(ivf, xq, gt, target_recall=0.95, k=K, repeats=1)


def _recall(index, xq, gt, params):
    ids = np.asarray(jann.search(index, xq, K, **params)[1])
    return np.mean([len(set(a) & set(b)) / K for a, b in zip(ids, gt[:, :K])])


# ------------------------------------------------------------------ parameter space
def test_space_by_index_type(data):
    xb = data[0]
    d = xb.shape[1]
    assert jann.search_parameter_space(jann.index_factory(d, "Flat")) == {}
    assert jann.search_parameter_space(jann.index_factory(d, "IVF64,Flat")) == {
        "nprobe": (1, 2, 4, 8, 16, 32, 64)}
    # nlist not a power of two: probing every list is still offered
    assert jann.search_parameter_space(jann.index_factory(d, "IVF48,SQ8"))["nprobe"] == (
        1, 2, 4, 8, 16, 32, 48)
    assert jann.search_parameter_space(jann.index_factory(d, "IVF16,PQ14,RFlat")) == {
        "nprobe": nprobe_values(16), "k_factor": K_FACTOR_VALUES}
    assert jann.search_parameter_space(jann.index_factory(d, "PCA32,IVF8,Flat")) == {
        "nprobe": nprobe_values(8)}
    # indexes that scan everything have nothing to tune but the refine depth
    assert jann.search_parameter_space(jann.index_factory(d, "Residual16,PQ14")) == {}
    assert jann.search_parameter_space(jann.index_factory(d, "PQ14,RFlat")) == {
        "k_factor": K_FACTOR_VALUES}
    assert all(a < b for a, b in zip(GRAPH_EF_VALUES, GRAPH_EF_VALUES[1:]))


def test_space_declared_by_the_index_type():
    class Declares(jann.FlatIndex):  # an index type of one's own answers with its method
        def search_parameter_space(self):
            return {"ef": [16, 64]}

    flat = jann.index_factory(4, "Flat")
    index = Declares(**{f.name: getattr(flat, f.name) for f in dataclasses.fields(flat)})
    assert jann.search_parameter_space(index) == {"ef": (16, 64)}
    assert jann.search_parameter_space(flat) == {}


def test_space_rejects_non_index():
    with pytest.raises(jann.InvalidInputError, match="jann index"):
        jann.search_parameter_space(np.zeros((3, 3)))
    with pytest.raises(jann.InvalidInputError, match="nlist"):
        nprobe_values(0)


# ------------------------------------------------------------------ autotune on real data
def test_frontier_is_pareto_and_monotone(tuned):
    front = tuned.frontier
    assert len(tuned.points) + len(tuned.skipped) == len(nprobe_values(32))
    assert front and set(map(id, front)) <= set(map(id, tuned.points))
    recalls = [p.recall for p in front]
    qps = [p.qps for p in front]
    assert all(a < b for a, b in zip(recalls, recalls[1:]))
    assert all(a > b for a, b in zip(qps, qps[1:]))
    for p in tuned.points:  # every measured point is on the frontier or beaten by it
        assert any(f.recall >= p.recall and f.qps >= p.qps for f in front)
    for f in front:  # and nothing measured beats a frontier point on both axes
        assert not any(p.recall >= f.recall and p.qps > f.qps
                       or p.recall > f.recall and p.qps >= f.qps for p in tuned.points)


def test_points_carry_timing_apart_from_warmup(tuned):
    for p in tuned.points:
        assert set(p.params) == {"nprobe"}
        assert len(p.runs_s) == 1 and p.seconds == min(p.runs_s)
        assert p.qps == pytest.approx(NQ / p.seconds)
        assert p.warmup_s > 0


def test_chosen_setting_meets_target_when_recomputed(tuned, ivf, data):
    _, xq, gt = data
    assert tuned.met and tuned.best is not None
    assert _recall(ivf, xq, gt, tuned.best.params) == pytest.approx(tuned.best.recall)
    assert tuned.best.recall >= 0.95
    # the fastest among all measured settings that reach the target
    meeting = [p for p in tuned.points if p.recall >= 0.95]
    assert tuned.best.qps == max(p.qps for p in meeting)
    # probing every list is exact, so the most accurate point has recall 1
    assert tuned.best_recall.recall == 1.0
    assert "nprobe=" in str(tuned) and "*" in tuned.table()
    d = tuned.as_dict()
    assert d["met"] and d["best"]["params"] == tuned.best.params


def test_recall_is_monotone_in_nprobe(tuned):
    by_nprobe = sorted(tuned.points, key=lambda p: p.params["nprobe"])
    recalls = [p.recall for p in by_nprobe]
    assert all(a <= b + 1e-9 for a, b in zip(recalls, recalls[1:]))


def test_unreachable_target(ivf, data):
    _, xq, gt = data
    result = jann.autotune(ivf, xq, gt, target_recall=1.0, k=K, params={"nprobe": [1, 2]},
                           repeats=1)
    assert result.best is None and not result.met
    assert result.best_recall.recall < 1.0
    assert "no setting reaches" in str(result)
    assert result.best_for(0.5) is not None  # a lower target is answered from the same points


def test_combined_grid_for_refine(data):
    xb, xq, gt = data
    # 4-bit codes train fast and rank coarsely, so re-ranking has something to fix
    index = jann.train(jann.index_factory(xb.shape[1], "IVF16,PQ7x4,RFlat"), xb[:3000],
                       key=jax.random.key(1))
    index = jann.add(index, xb)
    result = jann.autotune(index, xq, gt, 0.9, k=K, params={"nprobe": [1, 16],
                                                            "k_factor": [1, 8]},
                           repeats=1, prune=False)
    assert sorted(tuple(p.params.values()) for p in result.points) == [
        (1, 1), (1, 8), (16, 1), (16, 8)]
    for p in result.points:
        assert _recall(index, xq, gt, p.params) == pytest.approx(p.recall)
    # re-ranking 8x more candidates from all lists beats the raw PQ ranking
    recall = {tuple(p.params.values()): p.recall for p in result.points}
    assert recall[(16, 8)] > recall[(16, 1)]


def test_flat_has_a_single_exact_point(data):
    xb, xq, gt = data
    index = jann.add(jann.index_factory(xb.shape[1], "Flat"), xb)
    result = jann.autotune(index, xq, gt, k=K, repeats=1)
    assert len(result.points) == 1 and result.points[0].params == {}
    assert result.best.recall == 1.0


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kwargs, error, match", [
    ({"target_recall": 0.0}, jann.InvalidInputError, "target_recall"),
    ({"target_recall": 1.5}, jann.InvalidInputError, "target_recall"),
    ({"target_recall": True}, jann.InvalidInputError, "target_recall"),
    ({"k": 0}, jann.InvalidInputError, "k must be"),
    ({"repeats": 0}, jann.InvalidInputError, "repeats"),
    ({"params": {"efSearch": [16, 32]}}, jann.InvalidInputError, "efSearch|nprobe"),
    ({"params": {"nprobe": [4, 64]}}, jann.InvalidInputError, "nprobe"),
    ({"params": {"nprobe": []}}, jann.InvalidInputError, "no values"),
    ({"params": [("nprobe", [1])]}, jann.InvalidInputError, "dict"),
])
def test_bad_arguments_raise_before_measuring(ivf, data, kwargs, error, match):
    _, xq, gt = data
    calls = []
    with pytest.raises(error, match=match):
        jann.autotune(ivf, xq, gt, **{"k": K, **kwargs},
                      progress=lambda *a: calls.append(a))
    assert not calls


def test_bad_ground_truth_and_queries(ivf, data):
    _, xq, gt = data
    with pytest.raises(jann.InvalidInputError, match="gt must be"):
        jann.autotune(ivf, xq, gt[:-1], k=K)
    with pytest.raises(jann.InvalidInputError, match="needs at least"):
        jann.autotune(ivf, xq, gt[:, :5], k=K)
    with pytest.raises(jann.InvalidDtypeError, match="integer"):
        jann.autotune(ivf, xq, gt.astype(np.float32), k=K)
    with pytest.raises(jann.InvalidInputError, match="dimension"):
        jann.autotune(ivf, xq[:, :10], gt, k=K)


def test_untrained_empty_or_foreign_index(data):
    xb, xq, gt = data
    with pytest.raises(jann.NotTrainedError):
        jann.autotune(jann.index_factory(xb.shape[1], "IVF8,Flat"), xq, gt, k=K)
    with pytest.raises(jann.InvalidInputError, match="non-empty"):
        jann.autotune(jann.index_factory(xb.shape[1], "Flat"), xq, gt, k=K)
    with pytest.raises(jann.InvalidInputError, match="jann index"):
        jann.autotune(object(), xq, gt, k=K)


# ------------------------------------------------------------------ exploration logic
def _synthetic(params):
    """A monotone model: recall and cost rise with both parameters, recall saturates."""
    a, b = params["a"], params["b"]
    recall = min(1.0, 1 - 0.5 / (a * b) + 0.02 * np.log2(b))
    seconds = a * (1 + 0.3 * b)
    return OperatingPoint(params=params, recall=recall, qps=1 / seconds, seconds=seconds)


def test_pruning_keeps_the_exhaustive_frontier():
    space = {"a": [1, 2, 4, 8, 16], "b": [1, 2, 4, 8]}
    full = explore(space, _synthetic, prune=False)
    pruned = explore(space, _synthetic, prune=True)
    assert len(full.points) == 20
    assert len(pruned.points) + len(pruned.skipped) == 20 and pruned.skipped
    key = lambda r: [tuple(p.params.items()) for p in r.frontier]
    assert key(pruned) == key(full)
    assert pruned.best.params == full.best.params


def test_pareto_frontier_ties_and_order():
    pts = [OperatingPoint({"x": i}, r, q, 1 / q) for i, (r, q) in enumerate(
        [(0.5, 100.0), (0.9, 50.0), (0.9, 60.0), (0.7, 40.0), (0.5, 100.0), (1.0, 10.0)])]
    front = pareto_frontier(pts)
    assert [p.params["x"] for p in front] == [0, 2, 5]


def test_recall_at_k_counts_only_real_ids():
    gt = np.array([[0, 1, 2], [3, 4, 5]])
    found = np.array([[2, 9, 0], [-1, -1, -1]])
    assert recall_at_k(found, gt, 3) == pytest.approx(2 / 6)
    assert recall_at_k(found, gt, 1) == 0.0
    assert recall_at_k(gt[:, ::-1], gt, 3) == 1.0
    with pytest.raises(jann.InvalidInputError):
        recall_at_k(found[:1], gt, 3)
    with pytest.raises(jann.InvalidInputError):
        recall_at_k(found, gt, 4)


def test_explore_order_is_seeded():
    seen = {}
    for seed in (0, 0, 1):
        order = []
        explore({"a": [1, 2, 3, 4, 5, 6]},
                lambda p, order=order: (order.append(p["a"]),
                                        _synthetic({"a": p["a"], "b": 1}))[1],
                prune=False, seed=seed)
        seen.setdefault(seed, []).append(order)
    assert seen[0][0] == seen[0][1]
    assert seen[0][0][:2] == [1, 6]  # cheapest, dearest, then the rest
    assert sorted(seen[1][0]) == [1, 2, 3, 4, 5, 6]


def test_grid_values_deduplicated_and_sorted():
    order = []
    result = explore({"a": [4, 1, 4, np.int64(2)]},
                     lambda p: (order.append(p["a"]), _synthetic({"a": p["a"], "b": 1}))[1],
                     prune=False)
    assert sorted(order) == [1, 2, 4]
    assert [p.params["a"] for p in result.points] == [1, 2, 4]
    assert all(type(p.params["a"]) is int for p in result.points)
    assert list(itertools.chain(result.skipped)) == []
