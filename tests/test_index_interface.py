"""The index interface (`jann.index.Index`): a type that leaves out a required member fails
at its class statement, and a toy index type written in its own module (toy_index.py),
with no edit to jann, works with every entry point: the API (inside jit too), autotune,
checkpoints, placement on a mesh and `jann serve`."""

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

import jann
from jann import _pytree
from jann.index import REQUIRED, Index
from toy_index import ToyExact

D = 16


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(500, D)).astype(np.float32), rng.normal(size=(20, D)).astype(np.float32)


@pytest.fixture(scope="module")
def pair(data):
    """The toy index and a Flat index holding the same vectors."""
    xb, _ = data
    return jann.add(ToyExact.create(D), xb), jann.add(jann.index_factory(D, "Flat"), xb)


def test_a_missing_member_fails_the_class_statement():
    with pytest.raises(TypeError, match="Incomplete does not define .*search_core"):
        @jann.pytree_dataclass
        class Incomplete(Index):
            count: jax.Array

            def describe(self):
                return "incomplete"
    assert "search_core" in REQUIRED

    class Wrapper(Index, abstract=True):  # abstract bases are not checked
        pass


def test_toy_index_answers_like_flat(pair, data):
    toy, flat = pair
    _, xq = data
    (d1, i1), (d2, i2) = jann.search(toy, xq, 7), jann.search(flat, xq, 7)
    np.testing.assert_array_equal(np.asarray(i1), np.asarray(i2))
    np.testing.assert_allclose(np.asarray(d1), np.asarray(d2), rtol=1e-4, atol=1e-3)
    r1, r2 = jann.range_search(toy, xq, 20.0), jann.range_search(flat, xq, 20.0)
    np.testing.assert_array_equal(np.asarray(r1[0]), np.asarray(r2[0]))
    np.testing.assert_array_equal(np.asarray(r1[2]), np.asarray(r2[2]))
    np.testing.assert_allclose(np.asarray(jann.reconstruct(toy, [3, 9])),
                               np.asarray(jann.reconstruct(flat, [3, 9])))
    np.testing.assert_allclose(np.asarray(jann.reconstruct_n(toy, 5, 4)),
                               np.asarray(jann.reconstruct_n(flat, 5, 4)))
    (t2, n1), (f2, n2) = jann.remove_ids(toy, [0, 4, 8]), jann.remove_ids(flat, [0, 4, 8])
    assert n1 == n2 == 3 and jann.ntotal(t2) == jann.ntotal(f2) == 497
    np.testing.assert_array_equal(np.asarray(jann.search(t2, xq, 5)[1]),
                                  np.asarray(jann.search(f2, xq, 5)[1]))
    assert jann.search_parameter_space(toy) == {}


def test_toy_index_errors_and_jit(pair, data):
    toy, _ = pair
    xb, xq = data
    with pytest.raises(jann.InvalidInputError, match="dimension|shape"):
        jann.search(toy, xq[:, :4], 3)
    with pytest.raises(jann.InvalidInputError, match="unknown search parameter"):
        jann.search(toy, xq, 3, nprobe=4)
    with pytest.raises(jann.InvalidInputError, match="NaN"):
        jann.add(toy, np.full((2, D), np.nan, np.float32))
    with pytest.raises(jann.InvalidInputError, match="IVF"):
        jann.add_preassigned(toy, xb[:2], [0, 0])

    full = jax.jit(lambda ix, x: jann.add(ix, x))(ToyExact.create(D).grown(256), xb[:300])
    with pytest.raises(jann.CapacityOverflowError):
        jann.check(full)
    inside = jax.jit(lambda ix, q: jann.search(ix, q, 3))(toy, jnp.asarray(xq))
    np.testing.assert_array_equal(np.asarray(inside[1]), np.asarray(jann.search(toy, xq, 3)[1]))


def test_toy_index_checkpoints(pair, data, tmp_path, monkeypatch):
    toy, _ = pair
    _, xq = data
    jann.save(toy, tmp_path / "ckpt")
    for back in (jann.load(tmp_path / "ckpt"), jann.deserialize(jann.serialize(toy))):
        assert isinstance(back, ToyExact)
        np.testing.assert_array_equal(np.asarray(jann.search(back, xq, 4)[1]),
                                      np.asarray(jann.search(toy, xq, 4)[1]))
    monkeypatch.delitem(_pytree.PYTREE_TYPES, "ToyExact")  # a process that never imported it
    with pytest.raises(jann.CheckpointError, match="toy_index.*import it"):
        jann.load(tmp_path / "ckpt")


def test_toy_index_on_a_mesh(pair, data):
    toy, _ = pair
    _, xq = data
    mesh = Mesh(np.array(jax.devices()[:1]), ("devices",))
    placed = jann.replicate(toy, mesh)
    np.testing.assert_array_equal(np.asarray(jann.search(placed, xq, 4)[1]),
                                  np.asarray(jann.search(toy, xq, 4)[1]))
    assert isinstance(jann.unshard(placed), ToyExact)


def test_toy_index_served(pair, data, tmp_path, monkeypatch):
    pytest.importorskip("starlette", reason="jann serve needs the 'serve' extra")
    from jann.client import ServerProcess
    toy, _ = pair
    _, xq = data
    jann.save(toy, tmp_path / "ckpt")
    tests = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (tests, os.environ.get("PYTHONPATH")) if p))
    with ServerProcess(tmp_path / "ckpt", "--import", "toy_index") as server:
        distances, ids = server.client().search(xq, 4)
    np.testing.assert_array_equal(np.asarray(ids), np.asarray(jann.search(toy, xq, 4)[1]))
