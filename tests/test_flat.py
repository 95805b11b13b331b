"""Flat index: exact search, ids, selectors, removal, reconstruction, range search."""

import faiss
import jax
import numpy as np
import pytest

import jann

from _oracle import SIMILARITIES, data_for, knn as oracle_knn, pairwise as oracle_pairwise
from conftest import assert_knn_equal, flat


@pytest.mark.parametrize("metric", jann.ops.METRICS)
def test_search_exact_for_every_metric(metric, rng):
    xb, xq = data_for(metric, rng, 500, 16), data_for(metric, rng, 23, 16)
    index = jann.add(flat(16, metric=metric, metric_arg=3.0), xb)
    D, I = jann.search(index, xq, 10)
    assert I.shape == (23, 10) and D.dtype == np.float32
    assert_knn_equal(D, I, *oracle_knn(xq, xb, 10, metric, p=3.0))


def test_l2_real_data_matches_faiss_and_oracle(fmnist):
    xb, xq = fmnist["base"], fmnist["queries"][:200]
    index = jann.add(flat(196), xb)
    D, I = jann.search(index, xq, 10)
    ref = faiss.IndexFlatL2(196)
    ref.add(xb)
    fD, fI = ref.search(xq, 10)
    assert_knn_equal(D, I, *oracle_knn(xq, xb, 10, "l2"), rtol=1e-5, atol=1e-2)
    assert (np.asarray(I) == fI).mean() > 0.999


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_storage(dtype, fmnist):
    xb, xq = fmnist["base"][:5000], fmnist["queries"][:100]
    index = jann.add(flat(196, f"Flat({dtype})"), xb)
    assert index.vectors.dtype == dtype
    stored = np.asarray(index.vectors[:5000].astype(np.float32), np.float64)
    # Exact search over the stored (rounded) vectors, accumulated in float32.
    D, I = jann.search(index, xq, 10)
    assert_knn_equal(D, I, *oracle_knn(xq, stored, 10, "l2"), rtol=1e-4, atol=1.0)
    recall = np.mean([len(set(a) & set(b)) / 10
                      for a, b in zip(np.asarray(I), oracle_knn(xq, xb, 10, "l2")[1])])
    assert recall > 0.97


def test_cosine_is_normalised_inner_product(rng):
    xb = rng.standard_normal((300, 8)).astype(np.float32) * rng.random((300, 1)) * 10
    xq = rng.standard_normal((5, 8)).astype(np.float32)
    D, I = jann.search(jann.add(flat(8, metric="cosine"), xb), xq, 4)
    assert_knn_equal(D, I, *oracle_knn(xq, xb, 4, "cosine"))
    assert np.all(np.asarray(D) <= 1.0 + 1e-6)


@pytest.mark.parametrize("k", [1, 50, 200, 3000])
def test_any_k_including_more_than_stored(k, rng):
    xb = rng.standard_normal((200, 4)).astype(np.float32)
    xq = rng.standard_normal((3, 4)).astype(np.float32)
    D, I = jann.search(jann.add(flat(4), xb), xq, k)
    assert_knn_equal(D, I, *oracle_knn(xq, xb, k, "l2"))
    if k > 200:
        assert (np.asarray(I)[:, 200:] == -1).all() and np.isposinf(np.asarray(D)[:, 200:]).all()


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_empty_index_returns_minus_one(metric):
    D, I = jann.search(flat(6, metric=metric), np.ones((2, 6), np.float32), 3)
    assert (np.asarray(I) == -1).all()
    assert np.isinf(np.asarray(D)).all() and (np.sign(np.asarray(D)) == (-1 if metric == "ip" else 1)).all()


def test_many_adds_grow_by_doubling_with_few_compiles(rng, compile_counter):
    index = flat(8)
    sizes = rng.integers(1, 400, 60)
    chunks = [rng.standard_normal((int(s), 8)).astype(np.float32) for s in sizes]
    for c in chunks:
        index = jann.add(index, c)
    total = int(sizes.sum())
    assert jann.ntotal(index) == total
    assert index.capacity == 1 << (total - 1).bit_length()
    # Capacities 256 .. 2^15 (8 values), one add bucket each, plus the growth pads.
    assert compile_counter.count <= 3 * 8 + 8
    xb = np.concatenate(chunks)
    xq = rng.standard_normal((5, 8)).astype(np.float32)
    assert_knn_equal(*jann.search(index, xq, 5), *oracle_knn(xq, xb, 5, "l2"))


@pytest.mark.parametrize("description", ["Flat", "IVF4,SQ8", "HNSW8"])
def test_donated_adds_stream_in_place_and_a_refusal_keeps_the_index(description, rng):
    xb = rng.standard_normal((120, 8)).astype(np.float32)
    index = jann.add(jann.train(jann.index_factory(8, description), xb, key=0), xb[:100])
    copied = jann.add(index, xb[100:104])  # a few rows keep the graph case quick
    streamed = given = jann.reserve(index, 20)
    for row in xb[100:104]:
        streamed = jann.add(streamed, row[None], donate=True)
    assert given.ids.is_deleted()  # its buffers were handed over, not copied
    assert jann.ntotal(streamed) == 104
    xq = rng.standard_normal((4, 8)).astype(np.float32)
    params = {"nprobe": 4} if description.startswith("IVF") else {}
    (d_a, i_a), (d_b, i_b) = (jann.search(ix, xq, 5, **params) for ix in (streamed, copied))
    np.testing.assert_array_equal(np.asarray(i_a), np.asarray(i_b))
    np.testing.assert_allclose(np.asarray(d_a), np.asarray(d_b), rtol=1e-6)  # other capacity
    # An add the program refuses: the donated index comes back whole in the error.
    unique = jann.add(jann.index_factory(8, "IDMap2,Flat"), xb[:5], ids=np.arange(5))
    with pytest.raises(jann.DuplicateIdError, match=r"\.index") as caught:
        jann.add(unique, xb[5:6], ids=[3], donate=True)
    kept = caught.value.index
    assert jann.ntotal(jann.check(kept)) == 5
    np.testing.assert_array_equal(np.asarray(jann.reconstruct(kept, [3])), xb[3:4])


def test_add_in_batches_equals_one_add(rng):
    xb = rng.standard_normal((3000, 8)).astype(np.float32)
    one = jann.add(flat(8), xb)
    many = flat(8)
    for part in np.array_split(xb, 7):
        many = jann.add(many, part)
    xq = rng.standard_normal((9, 8)).astype(np.float32)
    for a, b in zip(jann.search(one, xq, 10), jann.search(many, xq, 10)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_second_search_of_same_shape_does_not_compile(rng, compile_counter):
    index = jann.add(flat(8), rng.standard_normal((1000, 8)).astype(np.float32))
    jann.search(index, rng.standard_normal((10, 8)).astype(np.float32), 5)
    before = compile_counter.count
    for nq in (10, 3, 16, 1):  # all in the 16-query bucket
        jann.search(index, rng.standard_normal((nq, 8)).astype(np.float32), 5)
    assert compile_counter.count == before


# ------------------------------------------------------------------------ ids
def test_idmap_user_ids_and_duplicates_allowed(rng):
    xb = rng.standard_normal((100, 4)).astype(np.float32)
    ids = rng.permutation(10_000)[:100] + 5
    index = jann.add(flat(4, "IDMap,Flat"), xb, ids=ids)
    D, I = jann.search(index, xb[:3], 1)
    np.testing.assert_array_equal(np.asarray(I)[:, 0], ids[:3])
    index = jann.add(index, xb[:2], ids=ids[:2])  # IDMap allows repeats (as FAISS)
    assert jann.ntotal(index) == 102


def test_idmap2_rejects_duplicates_and_keeps_index(rng):
    xb = rng.standard_normal((10, 4)).astype(np.float32)
    index = jann.add(flat(4, "IDMap2,Flat"), xb, ids=np.arange(10) * 3)
    with pytest.raises(jann.DuplicateIdError):
        jann.add(index, xb[:2], ids=[100, 6])
    with pytest.raises(jann.DuplicateIdError):
        jann.add(index, xb[:2], ids=[100, 100])
    assert jann.ntotal(index) == 10
    np.testing.assert_allclose(np.asarray(jann.reconstruct(index, 27)), xb[9])


def test_ids_rules():
    x = np.ones((2, 4), np.float32)
    with pytest.raises(jann.InvalidInputError, match="IDMap"):
        jann.add(flat(4), x, ids=[1, 2])
    with pytest.raises(jann.InvalidInputError, match="ids="):
        jann.add(flat(4, "IDMap,Flat"), x)
    with pytest.raises(jann.InvalidDtypeError):
        jann.add(flat(4, "IDMap,Flat"), x, ids=np.array([1.0, 2.0]))
    with pytest.raises(jann.InvalidInputError, match="shape"):
        jann.add(flat(4, "IDMap,Flat"), x, ids=[1, 2, 3])
    with pytest.raises(jann.InvalidInputError):
        jann.add(flat(4, "IDMap,Flat"), x, ids=[-1, 2])
    if not jax.config.jax_enable_x64:
        with pytest.raises(jann.InvalidInputError, match="x64"):
            jann.add(flat(4, "IDMap,Flat"), x, ids=np.array([1, 2**40]))


# ------------------------------------------------------------------ selectors
def _selectors(n):
    bitmap = np.zeros(n, bool)
    bitmap[::3] = True
    return {
        "range": (jann.IDSelectorRange(10, 50), lambda i: (i >= 10) & (i < 50)),
        "batch": (jann.IDSelectorBatch([3, 7, 99, 150, 151]), lambda i: np.isin(i, [3, 7, 99, 150, 151])),
        "bitmap": (jann.IDSelectorBitmap(bitmap), lambda i: bitmap[i]),
        "not": (~jann.IDSelectorRange(0, 100), lambda i: i >= 100),
        "and": (jann.IDSelectorAnd(jann.IDSelectorRange(0, 120), jann.IDSelectorBitmap(bitmap)),
                lambda i: (i < 120) & bitmap[i]),
        "or": (jann.IDSelectorOr(jann.IDSelectorRange(0, 5), jann.IDSelectorBatch([190])),
               lambda i: (i < 5) | (i == 190)),
        "xor": (jann.IDSelectorXOr(jann.IDSelectorRange(0, 100), jann.IDSelectorRange(50, 150)),
                lambda i: ((i < 100) != ((i >= 50) & (i < 150)))),
    }


@pytest.mark.parametrize("name", list(_selectors(200)))
def test_selector_filters_during_search(name, rng):
    n = 200
    xb = rng.standard_normal((n, 6)).astype(np.float32)
    xq = rng.standard_normal((7, 6)).astype(np.float32)
    selector, allowed = _selectors(n)[name]
    keep = np.flatnonzero(allowed(np.arange(n)))
    D, I = jann.search(jann.add(flat(6), xb), xq, 10, selector=selector)
    ref_d, ref_i = oracle_knn(xq, xb[keep], 10, "l2")
    ref_i = np.where(ref_i >= 0, keep[np.maximum(ref_i, 0)], -1)
    assert_knn_equal(D, I, ref_d, ref_i)  # the full k among allowed ids, not a shorter list


@pytest.mark.parametrize("name", list(_selectors(200)))
def test_remove_ids_with_every_selector(name, rng):
    n = 200
    xb = rng.standard_normal((n, 6)).astype(np.float32)
    selector, chosen = _selectors(n)[name]
    index = jann.add(flat(6, "IDMap,Flat"), xb, ids=np.arange(n))
    new, n_removed = jann.remove_ids(index, selector)
    removed = chosen(np.arange(n))
    assert n_removed == removed.sum() and jann.ntotal(new) == n - removed.sum()
    assert jann.ntotal(index) == n  # the input index is untouched
    _, I = jann.search(new, xb, 5)
    assert not np.isin(np.asarray(I), np.flatnonzero(removed)).any()


def test_sequential_ids_renumber_after_remove_as_faiss(rng):
    xb = rng.standard_normal((50, 4)).astype(np.float32)
    index, n = jann.remove_ids(jann.add(flat(4), xb), jann.IDSelectorRange(10, 20))
    ref = faiss.IndexFlatL2(4)
    ref.add(xb)
    assert ref.remove_ids(faiss.IDSelectorRange(10, 20)) == n == 10
    xq = rng.standard_normal((4, 4)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(jann.search(index, xq, 5)[1]), ref.search(xq, 5)[1])


def test_remove_accepts_plain_id_list(rng):
    index = jann.add(flat(4, "IDMap2,Flat"), rng.random((5, 4)), ids=[10, 11, 12, 13, 14])
    new, n = jann.remove_ids(index, [11, 14, 99])
    assert n == 2 and jann.ntotal(new) == 3


# ---------------------------------------------------------------- reconstruct
def test_reconstruct_and_reconstruct_n(rng):
    xb = rng.standard_normal((30, 5)).astype(np.float32)
    index = jann.add(flat(5), xb)
    np.testing.assert_array_equal(np.asarray(jann.reconstruct(index, 4)), xb[4])
    np.testing.assert_array_equal(np.asarray(jann.reconstruct(index, [1, 29])), xb[[1, 29]])
    np.testing.assert_array_equal(np.asarray(jann.reconstruct_n(index, 10, 5)), xb[10:15])
    with pytest.raises(jann.IdNotFoundError):
        jann.reconstruct(index, 30)
    with pytest.raises(jann.InvalidInputError):
        jann.reconstruct_n(index, 28, 5)
    idmap = jann.add(flat(5, "IDMap2,Flat"), xb, ids=np.arange(30) * 7)
    np.testing.assert_array_equal(np.asarray(jann.reconstruct(idmap, [70, 0])), xb[[10, 0]])
    with pytest.raises(jann.IdNotFoundError, match="71"):
        jann.reconstruct(idmap, [70, 71])


# --------------------------------------------------------------- range search
@pytest.mark.parametrize("metric", ["l2", "ip", "l1"])
def test_range_search_equals_brute_force(metric, rng):
    xb = rng.standard_normal((700, 8)).astype(np.float32)
    xq = rng.standard_normal((40, 8)).astype(np.float32)
    scores = oracle_pairwise(xq, xb, metric)
    radius = float(np.quantile(scores, 0.9 if metric in SIMILARITIES else 0.1))
    lims, D, I = jann.range_search(jann.add(flat(8, metric=metric), xb), xq, radius)
    lims, D, I = np.asarray(lims), np.asarray(D), np.asarray(I)
    assert lims.shape == (41,) and lims[-1] == len(I) == len(D)
    for q in range(40):
        want = np.flatnonzero(scores[q] > radius if metric in SIMILARITIES else scores[q] < radius)
        np.testing.assert_array_equal(I[lims[q]:lims[q + 1]], want)  # storage order, as FAISS
        np.testing.assert_allclose(D[lims[q]:lims[q + 1]], scores[q, want], rtol=1e-4, atol=1e-4)


def test_range_search_matches_faiss_and_handles_overflow(fmnist):
    xb, xq = fmnist["base"][:4000], fmnist["queries"][:30]
    ref = faiss.IndexFlatL2(196)
    ref.add(xb)
    radius = 2.0e5  # some queries match hundreds of vectors: past the first buffer
    flims, fD, fI = ref.range_search(xq, radius)
    lims, D, I = jann.range_search(jann.add(flat(196), xb), xq, radius)
    assert np.diff(flims).max() > 64
    np.testing.assert_array_equal(np.asarray(lims), flims)
    np.testing.assert_array_equal(np.asarray(I), fI)


def test_range_search_padded_reports_overflow(rng):
    xb = rng.standard_normal((100, 4)).astype(np.float32)
    index = jann.add(flat(4), xb)
    res = jax.jit(lambda ix, q: jann.range_search_padded(ix, q, 1e9, 8))(index, xb[:3])
    assert bool(res.overflow) and (np.asarray(res.counts) == 100).all()
    assert res.ids.shape == (3, 8)
    with pytest.raises(jann.InvalidInputError, match="range_search_padded"):
        jax.jit(lambda ix, q: jann.range_search(ix, q, 1.0))(index, xb[:3])


def test_range_search_with_selector(rng):
    xb = rng.standard_normal((300, 4)).astype(np.float32)
    lims, D, I = jann.range_search(jann.add(flat(4), xb), xb[:5], 1e9,
                                   selector=jann.IDSelectorRange(100, 110))
    np.testing.assert_array_equal(np.asarray(I), np.tile(np.arange(100, 110), 5))


# ------------------------------------------------------- model-based sequence
def test_random_operation_sequence_matches_python_model(rng):
    """add / remove / search in random order, checked against a dict of id -> vector."""
    d = 6
    index = flat(d, "IDMap2,Flat")
    model: dict[int, np.ndarray] = {}
    next_id = 0
    for step in range(40):
        op = rng.choice(["add", "add", "remove", "search"])
        if op == "add":
            n = int(rng.integers(1, 60))
            x = rng.standard_normal((n, d)).astype(np.float32)
            ids = np.arange(next_id, next_id + n) * 2 + 1
            next_id += n
            index = jann.add(index, x, ids=ids)
            model.update(zip(ids.tolist(), x))
        elif op == "remove" and model:
            victims = rng.choice(list(model), size=min(len(model), int(rng.integers(1, 20))),
                                 replace=False)
            index, n_removed = jann.remove_ids(index, jann.IDSelectorBatch(victims))
            assert n_removed == len(victims)
            for v in victims.tolist():
                del model[v]
        assert jann.ntotal(index) == len(model)
        xq = rng.standard_normal((4, d)).astype(np.float32)
        D, I = jann.search(index, xq, 8)
        keys = np.array(sorted(model), dtype=np.int64)
        vecs = np.stack([model[k] for k in keys]) if len(keys) else np.zeros((0, d))
        ref_d, ref_pos = oracle_knn(xq, vecs, 8, "l2")
        ref_i = np.where(ref_pos >= 0, keys[np.maximum(ref_pos, 0)] if len(keys) else -1, -1)
        np.testing.assert_allclose(np.asarray(D), ref_d, rtol=1e-4, atol=1e-4)
        for row in range(4):
            assert set(np.asarray(I)[row][np.asarray(I)[row] >= 0]) <= set(model)
        if len(keys):
            assert_knn_equal(D, I, ref_d, ref_i)
