"""Bad input: a clear jann exception naming the problem, and the index left unchanged."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jann

from conftest import flat


@pytest.fixture
def index(rng):
    return jann.add(flat(4), rng.standard_normal((20, 4)).astype(np.float32))


def _unchanged(before, after_ntotal=20):
    assert jann.ntotal(before) == after_ntotal


@pytest.mark.parametrize("x,error,match", [
    (np.ones((3, 5), np.float32), jann.InvalidInputError, "dimension 5.*d=4"),
    (np.ones(4, np.float32), jann.InvalidInputError, "2-D.*x\\[None, :\\]"),
    (np.ones((2, 2, 4), np.float32), jann.InvalidInputError, "2-D"),
    (np.array([["a", "b", "c", "d"]]), jann.InvalidDtypeError, "real numbers"),
    (np.ones((2, 4), np.complex64), jann.InvalidDtypeError, "real numbers"),
    (np.ones((2, 4), bool), jann.InvalidDtypeError, "real numbers"),
    (np.array([[1, 2, np.nan, 4]], np.float32), jann.InvalidInputError, "NaN"),
    (np.array([[1, 2, np.inf, 4]], np.float32), jann.InvalidInputError, "inf"),
])
def test_bad_vectors_for_add_and_search(index, x, error, match):
    with pytest.raises(error, match=match):
        jann.add(index, x)
    _unchanged(index)
    with pytest.raises(error):
        jann.search(index, x, 3)


def test_errors_are_jann_errors_and_builtin_kinds(index):
    with pytest.raises(jann.JannError):
        jann.search(index, np.ones((1, 3)), 1)
    with pytest.raises(ValueError):
        jann.search(index, np.ones((1, 3)), 1)
    with pytest.raises(TypeError):
        jann.add(index, np.ones((1, 4), complex))


@pytest.mark.parametrize("k", [0, -3, 2.0, "5", None, True])
def test_bad_k(index, k):
    with pytest.raises(jann.InvalidInputError, match="k must"):
        jann.search(index, np.ones((1, 4), np.float32), k)


def test_integer_vectors_are_accepted(index):
    D, I = jann.search(index, np.ones((2, 4), np.uint8), 2)
    assert I.shape == (2, 2)


def test_nan_euclidean_accepts_nan_but_not_inf():
    index = jann.add(flat(3, metric="nan_euclidean"), np.array([[1, np.nan, 3], [1, 2, 3]], np.float32))
    D, I = jann.search(index, np.array([[1, 2, np.nan]], np.float32), 2)
    assert np.isfinite(np.asarray(D)).all()
    with pytest.raises(jann.InvalidInputError, match="inf"):
        jann.add(index, np.array([[np.inf, 1, 1]], np.float32))


@pytest.mark.parametrize("radius,match", [(-1.0, ">= 0"), (float("nan"), "NaN"), ("far", "number"),
                                          (np.ones(3), "scalar")])
def test_bad_radius(index, radius, match):
    with pytest.raises(jann.JannError, match=match):
        jann.range_search(index, np.ones((1, 4), np.float32), radius)


def test_negative_radius_is_fine_for_similarities(rng):
    ip = jann.add(flat(4, metric="ip"), rng.standard_normal((20, 4)).astype(np.float32))
    lims, D, I = jann.range_search(ip, np.ones((1, 4), np.float32), -0.5)
    assert (np.asarray(D) > -0.5).all()


def test_unknown_metric_and_factory_string():
    with pytest.raises(jann.UnknownMetricError, match="supported: l2, ip"):
        jann.index_factory(4, "Flat", metric="hamming")
    with pytest.raises(jann.FactoryStringError, match="Grammar"):
        jann.index_factory(4, "IVF99,Nonsense")
    with pytest.raises(jann.FactoryStringError):
        jann.index_factory(4, 42)
    with pytest.raises(jann.InvalidInputError, match="positive int"):
        jann.index_factory(0, "Flat")
    with pytest.raises(jann.InvalidInputError, match="metric_arg"):
        jann.index_factory(4, "Flat", metric="lp", metric_arg=0)


def test_unknown_search_parameter_and_selector(index):
    with pytest.raises(jann.InvalidInputError, match="nprobe"):
        jann.search(index, np.ones((1, 4), np.float32), 1, nprobe=4)
    with pytest.raises(jann.InvalidInputError, match="IDSelector"):
        jann.search(index, np.ones((1, 4), np.float32), 1, selector=[1, 2])


def test_bad_selectors():
    with pytest.raises(jann.InvalidDtypeError):
        jann.IDSelectorBatch([1.5, 2.0])
    with pytest.raises(jann.InvalidDtypeError):
        jann.IDSelectorRange(0.5, 3)
    with pytest.raises(jann.InvalidInputError, match="uint8"):
        jann.IDSelectorBitmap(np.ones(3, np.int64))
    with pytest.raises(jann.InvalidInputError, match="IDSelector"):
        jann.IDSelectorNot([1, 2])


def test_failed_chunked_add_keeps_the_index(rng, index):
    big = rng.standard_normal((40_000, 4)).astype(np.float32)  # three add chunks
    big[-1, 0] = np.nan
    with pytest.raises(jann.InvalidInputError, match="row 39999"):
        jann.add(index, big)
    _unchanged(index)


# --- issue 20: what a newcomer hit -------------------------------------------------------
def test_search_keyword_typo_says_what_was_meant(rng):
    xb = rng.standard_normal((300, 4)).astype(np.float32)
    ivf = jann.add(jann.train(jann.index_factory(4, "IVF4,Flat"), xb), xb)
    with pytest.raises(jann.InvalidInputError, match="did you mean 'nprobe'"):
        jann.search(ivf, xb[:2], 3, nprob=2)


def test_int_seed_for_train(rng):
    xb = rng.standard_normal((300, 4)).astype(np.float32)
    empty = jann.index_factory(4, "IVF4,Flat")
    by_int = jann.train(empty, xb, key=3)
    by_key = jann.train(empty, xb, key=jax.random.key(3))
    np.testing.assert_array_equal(np.asarray(by_int.centroids), np.asarray(by_key.centroids))
    with pytest.raises(jann.InvalidInputError, match="key"):
        jann.train(empty, xb, key=True)


def test_bfloat16_vectors_are_accepted(rng):
    xb = rng.standard_normal((50, 4)).astype(np.float32)
    index = jann.add(jann.index_factory(4, "Flat", dtype="bfloat16"),
                     jnp.asarray(xb, jnp.bfloat16))
    D, I = jann.search(index, jnp.asarray(xb[:3], jnp.bfloat16), 1)
    np.testing.assert_array_equal(np.asarray(I)[:, 0], [0, 1, 2])


def test_selector_edge_cases():
    assert int(jann.IDSelectorBatch([]).size) == 0
    assert not np.asarray(jann.IDSelectorBatch([])(jnp.arange(5))).any()
    with pytest.raises(jann.InvalidInputError, match="imin.*imax"):
        jann.IDSelectorRange(200, 100)
    assert not np.asarray(jann.IDSelectorRange(5, 5)(jnp.arange(10))).any()  # empty is fine
    jann.IDSelectorRange(np.zeros(3, np.int32), np.array([4, 0, 9], np.int32))  # one per query
    with pytest.raises(jann.InvalidInputError, match="imin.*imax"):
        jann.IDSelectorRange(np.zeros(3, np.int32), np.array([4, -1, 9], np.int32))


_X64_CHECKPOINT = """
import sys
import numpy as np
import jann
x = np.arange(40, dtype=np.float32).reshape(10, 4)
index = jann.add(jann.index_factory(4, "IDMap,Flat"), x, ids=np.arange(10) + 2**40)
assert index.ids.dtype == np.int64
jann.save(index, sys.argv[1])
"""


def test_ids_past_the_id_dtype_match_nothing_and_never_wrap(rng, tmp_path):
    """Ids that int32 cannot hold (without x64) are in no index: removing, reconstructing
    or selecting them must not reach the id they would wrap to (2**32 + 3 -> 3)."""
    x = rng.standard_normal((10, 4)).astype(np.float32)
    index = jann.add(jann.index_factory(4, "IDMap,Flat"), x, ids=np.arange(10))
    big = 2**32 + 3
    kept, n = jann.remove_ids(index, [big])
    assert n == 0 and jann.ntotal(kept) == 10
    with pytest.raises(jann.IdNotFoundError, match=str(big)):
        jann.reconstruct(index, [3, big])
    _, ids = jann.search(index, x[3:4], 3, selector=jann.IDSelectorBatch([big, 2**31]))
    assert (np.asarray(ids) == -1).all()
    _, ids = jann.search(index, x[3:4], 10, selector=jann.IDSelectorRange(0, 2**32))
    assert sorted(np.asarray(ids)[0].tolist()) == list(range(10))
    _, ids = jann.search(index, x[3:4], 3, selector=jann.IDSelectorRange(-2**40, 2))
    assert sorted(np.asarray(ids)[0].tolist()) == [-1, 0, 1]
    nothing = jann.IDSelectorRange(2**33, 2**34)
    assert (np.asarray(jann.search(index, x[3:4], 3, selector=nothing)[1]) == -1).all()
    assert jann.IDSelectorRange(0, 2**32).imax == 2**31  # what the client sends on
    # int64 ids past int32, saved under x64 and loaded without it: refused, not wrapped
    # (a process with x64 has int64 ids, which hold them: nothing to refuse there)
    if not jax.config.jax_enable_x64:
        path = tmp_path / "x64"
        env = {**os.environ, "JAX_ENABLE_X64": "1"}
        subprocess.run([sys.executable, "-c", _X64_CHECKPOINT, str(path)], env=env,
                       check=True, timeout=120)
        with pytest.raises(jann.CheckpointError, match="jax_enable_x64"):
            jann.load(path)


def test_huge_k_is_padded_not_searched_and_absurd_sizes_are_refused(rng):
    x = rng.standard_normal((50, 4)).astype(np.float32)
    index = jann.add(jann.index_factory(4, "Flat"), x)
    D, I = jann.search(index, x[:2], 10**6)  # past the capacity: FAISS's -1 padding
    assert I.shape == (2, 10**6) and (np.asarray(I)[:, 50:] == -1).all()
    assert sorted(np.asarray(I)[0, :50].tolist()) == list(range(50))
    assert np.isinf(np.asarray(D)[:, 50:]).all()
    with pytest.raises(jann.InvalidInputError, match="results"):
        jann.search(index, x[:2], 10**9)
    for description in ("IVF99999999999999999999,Flat", "HNSW999999999"):
        with pytest.raises(jann.FactoryStringError, match="larger than"):
            jann.index_factory(4, description)
