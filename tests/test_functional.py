"""The functional promise: jann inside a user's jit, vmap over indexes, grad through
distances. None of FAISS, cuVS, ScaNN or hnswlib can do these."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jann

from _oracle import knn as oracle_knn
from conftest import assert_knn_equal, flat


def test_search_and_add_inside_user_jit(rng):
    xb = rng.standard_normal((500, 8)).astype(np.float32)
    extra = rng.standard_normal((20, 8)).astype(np.float32)
    xq = rng.standard_normal((6, 8)).astype(np.float32)
    index = jann.reserve(jann.add(flat(8), xb), 20)

    @jax.jit
    def step(index, new, queries):
        index = jann.add(index, new)
        return index, jann.search(index, queries, 5)

    new_index, (D, I) = step(index, extra, xq)
    jann.check(new_index)
    assert jann.ntotal(new_index) == 520
    assert_knn_equal(D, I, *oracle_knn(xq, np.concatenate([xb, extra]), 5, "l2"))


def test_add_inside_jit_that_overflows_sets_flag_and_keeps_data(rng):
    index = jann.add(flat(4), rng.standard_normal((250, 4)).astype(np.float32))
    assert index.capacity == 256
    too_many = rng.standard_normal((10, 4)).astype(np.float32)
    out = jax.jit(jann.add)(index, too_many)
    assert jann.ntotal(out) == 250  # refused as a whole, nothing half-written
    np.testing.assert_array_equal(np.asarray(out.vectors[:250]), np.asarray(index.vectors[:250]))
    with pytest.raises(jann.CapacityOverflowError, match="reserve"):
        jann.check(out)
    ok = jax.jit(jann.add)(jann.reserve(index, 10), too_many)
    assert jann.ntotal(jann.check(ok)) == 260


@pytest.mark.parametrize("description", ["Flat", "IVF4,Flat,RFlat", "HNSW8"])
def test_status_is_sticky_until_cleared_and_a_flagged_index_is_not_saved(
        description, rng, tmp_path):
    """A refusal inside jit stays recorded through later successful writes (so a jitted
    loop cannot hide it), until jann.clear_status; saving a flagged index is refused."""
    xb = rng.standard_normal((300, 8)).astype(np.float32)
    index = jann.train(jann.index_factory(8, description), xb, key=0)
    index = jann.reserve(jann.add(index, xb[:250]), 20)
    bad = xb[250:252].copy()
    bad[0, 0] = np.nan

    @jax.jit
    def two_adds(index, bad, good):
        return jann.add(jann.add(index, bad), good)

    out = two_adds(index, bad, xb[252:254])
    assert jann.ntotal(out) == 252  # the bad batch refused, the good one added
    for _ in range(2):  # check does not clear it
        with pytest.raises(jann.InvalidInputError, match="NaN"):
            jann.check(out)
    with pytest.raises(jann.CheckpointError, match="clear_status"):
        jann.save(out, tmp_path / "flagged")
    with pytest.raises(jann.CheckpointError, match="clear_status"):
        jann.serialize(out)
    cleared = jann.check(jann.clear_status(out))
    assert jann.ntotal(cleared) == 252
    jann.save(cleared, tmp_path / "cleared")
    assert jann.ntotal(jann.check(jann.load(tmp_path / "cleared"))) == 252


def test_num_threads_binds_every_thread_and_is_undone(rng):
    import threading
    started = threading.Event()
    done = threading.Event()
    before = threading.Thread(target=lambda: (started.set(), done.wait(30)))
    before.start()
    started.wait(5)
    cores = jann.config.get_num_threads()
    try:
        jann.config.set_num_threads(1)
        assert jann.config.get_num_threads() == 1
        assert len(os.sched_getaffinity(before.native_id)) == 1  # a thread already running
        index = jann.add(flat(8), rng.standard_normal((50, 8)).astype(np.float32))
        assert jann.search(index, np.zeros((1, 8), np.float32), 3)[1].shape == (1, 3)
        with pytest.raises(jann.InvalidInputError, match="positive int"):
            jann.config.set_num_threads(0)
    finally:
        jann.config.set_num_threads(None)
        done.set()
        before.join()
    assert jann.config.get_num_threads() == cores


def test_nan_inside_jit_gives_empty_rows_and_refused_add(rng):
    index = jann.add(flat(4), rng.standard_normal((50, 4)).astype(np.float32))
    q = np.ones((2, 4), np.float32)
    q[1, 2] = np.nan
    D, I = jax.jit(lambda i, x: jann.search(i, x, 3))(index, q)
    assert (np.asarray(I)[1] == -1).all() and (np.asarray(I)[0] >= 0).all()
    out = jax.jit(jann.add)(index, q)
    assert jann.ntotal(out) == 50
    with pytest.raises(jann.InvalidInputError, match="NaN"):
        jann.check(out)


def test_vmap_over_stack_of_per_user_indexes(rng):
    users = [rng.standard_normal((int(n), 8)).astype(np.float32) for n in (40, 90, 7)]
    stacked = jann.stack([jann.add(flat(8), u) for u in users])
    xq = rng.standard_normal((3, 5, 8)).astype(np.float32)
    D, I = jax.jit(jax.vmap(lambda ix, q: jann.search(ix, q, 4)))(stacked, xq)
    assert D.shape == (3, 5, 4)
    for u, base in enumerate(users):
        assert_knn_equal(D[u], I[u], *oracle_knn(xq[u], base, 4, "l2"))


def test_vmap_over_queries_and_selector(rng):
    index = jann.add(flat(8), rng.standard_normal((100, 8)).astype(np.float32))
    xq = rng.standard_normal((10, 8)).astype(np.float32)
    single = jax.vmap(lambda q: jann.search(index, q[None], 3)[1][0])(xq)
    np.testing.assert_array_equal(np.asarray(single), np.asarray(jann.search(index, xq, 3)[1]))


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_grad_of_distances_wrt_queries(metric, rng):
    xb = rng.standard_normal((200, 6)).astype(np.float32)
    xq = rng.standard_normal((4, 6)).astype(np.float32)
    index = jann.add(flat(6, metric=metric), xb)

    def loss(q):
        D, _ = jann.search(index, q, 3)
        return jnp.sum(D)

    got = jax.grad(loss)(jnp.asarray(xq))
    _, I = jann.search(index, xq, 3)
    eps = 1e-3
    numeric = np.zeros_like(xq)
    for i in range(xq.shape[0]):
        for j in range(xq.shape[1]):
            e = np.zeros_like(xq)
            e[i, j] = eps
            numeric[i, j] = (float(loss(xq + e)) - float(loss(xq - e))) / (2 * eps)
    np.testing.assert_allclose(np.asarray(got), numeric, rtol=2e-2, atol=2e-2)
    if metric == "l2":  # closed form: d/dq sum_j |q - x_j|^2 = sum_j 2 (q - x_j)
        nbrs = xb[np.asarray(I)]
        np.testing.assert_allclose(np.asarray(got), (2 * (xq[:, None] - nbrs)).sum(1),
                                   rtol=1e-4, atol=1e-4)


def test_retrieval_inside_a_training_step(rng):
    """A jitted loss that retrieves neighbours of its own output and is differentiated."""
    memory = jann.add(flat(4), rng.standard_normal((64, 4)).astype(np.float32))
    w = jnp.eye(4)

    @jax.jit
    def train_step(w, x):
        def loss(w):
            D, _ = jann.search(memory, x @ w, 2)
            return D.mean()
        return w - 0.01 * jax.grad(loss)(w)

    w2 = train_step(w, jnp.asarray(rng.standard_normal((8, 4)), jnp.float32))
    assert w2.shape == (4, 4) and not np.allclose(np.asarray(w2), np.eye(4))


def test_remove_and_range_inside_jit(rng):
    xb = rng.standard_normal((100, 4)).astype(np.float32)
    index = jann.add(flat(4), xb)

    @functools.partial(jax.jit)
    def f(index):
        index, n = jann.remove_ids(index, jann.IDSelectorRange(0, 50))
        return index, n, jann.range_search_padded(index, xb[:2], 1e9, 64)

    new, n, res = f(index)
    assert int(n) == 50 and jann.ntotal(new) == 50
    np.testing.assert_array_equal(np.asarray(res.counts), [50, 50])


def test_inputs_from_jax_and_dlpack(rng):
    xb = rng.standard_normal((50, 4)).astype(np.float32)

    class DlpackOnly:  # stands for a torch / cupy tensor: only the dlpack protocol
        def __init__(self, a):
            self._a = a

        def __dlpack__(self, **kw):
            return self._a.__dlpack__(**kw)

        def __dlpack_device__(self):
            return self._a.__dlpack_device__()

    index = jann.add(flat(4), DlpackOnly(xb))
    D1, I1 = jann.search(index, jnp.asarray(xb[:3]), 2)
    D2, I2 = jann.search(index, DlpackOnly(xb[:3]), 2)
    np.testing.assert_array_equal(np.asarray(I1), np.asarray(I2))
    assert isinstance(D1, jax.Array) and np.asarray(I1)[:, 0].tolist() == [0, 1, 2]


def test_torch_tensors_if_installed(rng):
    torch = pytest.importorskip("torch", reason="torch is optional; dlpack path tested above")
    xb = torch.from_numpy(rng.standard_normal((20, 4)).astype(np.float32))
    index = jann.add(flat(4), xb)
    assert np.asarray(jann.search(index, xb[:2], 1)[1])[:, 0].tolist() == [0, 1]
