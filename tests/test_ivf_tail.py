"""The append tail of IVF indexes (jann.ivf.tail): small adds are kept unsorted after the
lists and merged when the tail fills; every read gives what the merged index gives."""

import jax
import numpy as np
import pytest

import jann
from jann.ivf import tail
from tests._oracle import knn
from tests.conftest import assert_knn_equal

CAPACITY = tail.TAIL_MIN_CAPACITY  # the smallest capacity with a tail
BASE = 3000


@pytest.fixture(scope="module", params=[("IVF32,Flat", "l2"), ("IVF32,SQ8", "ip"),
                                        ("IVF32,PQ14", "l2")], ids=lambda p: p[0])
def streamed(request, fmnist):
    """(index with a non-empty tail, the same rows merged, the rows added)."""
    spec, metric = request.param
    x = fmnist["base"][: BASE + 120]
    index = jann.train(jann.index_factory(x.shape[1], spec, metric=metric), x[:BASE], key=0)
    index = jann.reserve(jann.add(index, x[:BASE]), CAPACITY - BASE)
    for start in range(BASE, BASE + 120, 30):  # batches of 1 and 29 rows
        index = jann.add(index, x[start:start + 1], donate=True)
        index = jann.add(index, x[start + 1:start + 30], donate=True)
    return index, index.flushed(), x


def test_small_adds_go_to_the_tail(streamed):
    index, merged, _ = streamed
    assert index.capacity == CAPACITY and tail.tail_size(index) == tail.tail_rows(CAPACITY, 32)
    assert index.tail_lists.shape == (tail.tail_size(index),)
    assert int(index.offsets[-1]) == BASE and int(index.count) == BASE + 120
    assert int(merged.offsets[-1]) == int(merged.count) == BASE + 120
    assert jann.ntotal(index) == BASE + 120


@pytest.mark.parametrize("nprobe", [1, 4, 32])
def test_search_equals_the_merged_index(streamed, fmnist, nprobe):
    index, merged, _ = streamed
    q = np.concatenate([fmnist["queries"][:20], fmnist["base"][BASE:BASE + 120:6]])
    D, I = jann.search(index, q, 10, nprobe=nprobe)
    D2, I2 = jann.search(merged, q, 10, nprobe=nprobe)
    assert_knn_equal(D, I, np.asarray(D2, np.float64), np.asarray(I2), rtol=1e-4, atol=1e-3)
    if index.metric == "l2" and nprobe == 32:  # the tail's rows queried find themselves
        own = np.arange(BASE, BASE + 120, 6)
        assert all(i in row for i, row in zip(own, np.asarray(I)[20:]))


def test_flat_tail_search_is_exact(fmnist):
    x = fmnist["base"][:BASE + 40]
    index = jann.train(jann.index_factory(x.shape[1], "IVF16,Flat"), x[:BASE], key=0)
    index = jann.reserve(jann.add(index, x[:BASE]), CAPACITY - BASE)
    for i in range(BASE, BASE + 40):
        index = jann.add(index, x[i:i + 1], donate=True)
    assert int(index.count) - int(index.offsets[-1]) == 40
    q = fmnist["queries"][:30]
    D, I = jann.search(index, q, 10, nprobe=16)
    assert_knn_equal(D, I, *knn(q, x, 10, "l2"))
    lists = np.asarray(index.assign(jax.numpy.asarray(q), 16))
    D3, I3 = jann.search_preassigned(index, q, 10, lists)
    assert_knn_equal(D3, I3, *knn(q, x, 10, "l2"))


def test_range_search_equals_the_merged_index(streamed, fmnist):
    index, merged, x = streamed
    q = np.concatenate([fmnist["queries"][:5], x[BASE:BASE + 120:20]])
    D, _ = jann.search(merged, q, 20, nprobe=8)
    radius = float(np.median(np.asarray(D)[:, -1]))
    got = jann.range_search(index, q, radius, nprobe=8)
    want = jann.range_search(merged, q, radius, nprobe=8)
    np.testing.assert_array_equal(got[0], want[0])
    for a, b in zip(np.split(np.asarray(got[2]), np.asarray(got[0])[1:-1]),
                    np.split(np.asarray(want[2]), np.asarray(want[0])[1:-1])):
        assert sorted(a.tolist()) == sorted(b.tolist())
    assert np.asarray(got[0])[-1] > 0


def test_remove_and_reconstruct_with_a_tail(streamed):
    index, merged, x = streamed
    rec = np.asarray(jann.reconstruct(index, np.arange(BASE - 5, BASE + 120)))
    np.testing.assert_allclose(
        rec, np.asarray(jann.reconstruct(merged, np.arange(BASE - 5, BASE + 120))),
        rtol=1e-5, atol=1e-5)
    gone = jann.IDSelectorRange(BASE - 50, BASE + 50)  # sorted rows and tail rows
    removed, n = jann.remove_ids(index, gone)
    expected, n2 = jann.remove_ids(merged, gone)
    assert int(n) == int(n2) == 100
    assert jann.ntotal(removed) == BASE + 20
    np.testing.assert_array_equal(np.asarray(removed.offsets), np.asarray(expected.offsets))
    np.testing.assert_array_equal(np.asarray(removed.ids), np.asarray(expected.ids))


def test_a_full_tail_is_merged_and_jitted_adds_compile_once(fmnist, compile_counter):
    x = fmnist["base"][: BASE + 600]
    index = jann.train(jann.index_factory(x.shape[1], "IVF16,Flat"), x[:BASE], key=0)
    index = jann.reserve(jann.add(index, x[:BASE]), CAPACITY - BASE)
    size = tail.tail_size(index)
    add = jax.jit(jann.add, donate_argnums=0)
    index = add(index, x[BASE:BASE + 1])
    before = compile_counter.count
    merges = 0
    for i in range(BASE + 1, BASE + size + 40):
        tail_before = int(index.count) - int(index.offsets[-1])
        index = add(index, x[i:i + 1])
        merges += int(index.count) == int(index.offsets[-1])
        assert tail_before <= size
    assert compile_counter.count == before
    assert merges == 1 and jann.ntotal(index) == BASE + size + 40
    jann.check(index)
    q = fmnist["queries"][:20]
    D, I = jann.search(index, q, 5, nprobe=16)
    assert_knn_equal(D, I, *knn(q, x[: BASE + size + 40], 5, "l2"))


def test_a_tail_survives_save_load_and_faiss_export(streamed, fmnist, tmp_path):
    index, merged, _ = streamed
    q = fmnist["queries"][:20]
    want = jann.search(merged, q, 10, nprobe=8)
    jann.save(index, tmp_path / "ix")
    loaded = jann.load(tmp_path / "ix")
    assert int(loaded.count) - int(loaded.offsets[-1]) == 120
    assert_knn_equal(*jann.search(loaded, q, 10, nprobe=8), np.asarray(want[0], np.float64),
                     np.asarray(want[1]), atol=1e-3)
    if index.codec.kernel_decode() is not None and "PQ" not in index.describe():
        back = jann.read_faiss(jann.write_faiss(index))
        assert jann.ntotal(back) == jann.ntotal(index)
        assert_knn_equal(*jann.search(back, q, 10, nprobe=8),
                         np.asarray(want[0], np.float64), np.asarray(want[1]), atol=1e-3)
