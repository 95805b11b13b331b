"""`backend=` on the public API: accepted by every index, the kernels' answers equal XLA's
(Pallas interpreter on CPU), a process-wide default, clear errors for unknown keywords
and for GPUs older than Triton's minimum."""

import jax.numpy as jnp
import numpy as np
import pytest

import jann
from jann.ops import backend


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(300, 24)).astype(np.float32),
            rng.normal(size=(5, 24)).astype(np.float32))


@pytest.mark.parametrize("spec", ["Flat", "IVF4,Flat", "IVF4,SQ8", "IVF4,PQ4", "IVF4,RQ2x4",
                                  "PCA16,Flat", "IVF4,Flat,RFlat", "HNSW8"])
def test_every_index_takes_backend_and_pallas_equals_xla(spec, data):
    xb, xq = data
    index = jann.add(jann.train(jann.index_factory(24, spec), xb), xb)
    params = {} if spec in ("Flat", "PCA16,Flat", "HNSW8") else {"nprobe": 2}
    d_x, i_x = jann.search(index, xq, 7, backend="xla", **params)
    d_p, i_p = jann.search(index, xq, 7, backend="pallas", **params)
    np.testing.assert_array_equal(np.asarray(i_p), np.asarray(i_x))
    np.testing.assert_allclose(np.asarray(d_p), np.asarray(d_x), rtol=1e-4, atol=1e-3)


def test_binary_flat_pallas_equals_xla():
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 256, size=(200, 8), dtype=np.uint8)
    index = jann.add(jann.index_factory(64, "BFlat"), codes)
    d_x, i_x = jann.search(index, codes[:6], 9, backend="xla")
    d_p, i_p = jann.search(index, codes[:6], 9, backend="pallas")
    np.testing.assert_array_equal(np.asarray(d_p), np.asarray(d_x))
    np.testing.assert_array_equal(np.asarray(i_p), np.asarray(i_x))


def test_range_search_and_knn_take_backend(data):
    xb, xq = data
    index = jann.add(jann.index_factory(24, "Flat"), xb)
    lims_a, d_a, _ = jann.range_search(index, xq, 40.0, backend="pallas")
    lims_b, d_b, _ = jann.range_search(index, xq, 40.0)
    np.testing.assert_array_equal(np.asarray(lims_a), np.asarray(lims_b))
    d1, i1 = jann.knn(xq, xb, 5, backend="pallas")
    d2, i2 = jann.knn(xq, xb, 5, backend="xla")
    np.testing.assert_array_equal(np.asarray(i1), np.asarray(i2))


def test_unknown_keyword_names_the_accepted_ones(data):
    xb, xq = data
    ivf = jann.add(jann.train(jann.index_factory(24, "IVF4,Flat"), xb), xb)
    with pytest.raises(jann.InvalidInputError, match=r"nprob.*accepts.*'backend'.*'nprobe'"):
        jann.search(ivf, xq, 3, nprob=2)
    flat = jann.add(jann.index_factory(24, "Flat"), xb)
    with pytest.raises(jann.InvalidInputError, match=r"accepts \['backend'\]"):
        jann.search(flat, xq, 3, nprobe=2)
    with pytest.raises(jann.InvalidInputError, match="backend must be one of"):
        jann.search(flat, xq, 3, backend="triton")


def test_process_default_backend(monkeypatch, data):
    xb, xq = data
    flat = jann.add(jann.index_factory(24, "Flat"), xb)
    assert jann.config.get_backend() == "auto"
    with jann.config.backend("pallas"):
        assert jann.config.get_backend() == "pallas"
        d, i = jann.search(flat, xq, 4)
    assert jann.config.get_backend() == "auto"
    np.testing.assert_array_equal(np.asarray(i), np.asarray(jann.search(flat, xq, 4)[1]))
    monkeypatch.setenv("JANN_BACKEND", "xla")
    assert jann.config.get_backend() == "xla"
    monkeypatch.setenv("JANN_BACKEND", "bogus")
    with pytest.raises(jann.InvalidInputError, match="JANN_BACKEND"):
        jann.search(flat, xq, 4)


def test_pallas_refused_on_pre_ampere_gpu_and_auto_stays_xla(monkeypatch, data):
    xb, xq = data
    monkeypatch.setattr(backend, "_gpus_below_triton_minimum", lambda: ("Tesla T4 (sm_75)",))
    monkeypatch.setattr(backend, "MEASURED_FASTER", frozenset({"knn"}))
    flat = jann.add(jann.index_factory(24, "Flat"), xb)
    with pytest.raises(jann.UnsupportedBackendError, match="T4"):
        jann.search(flat, xq, 3, backend="pallas")
    assert not backend.kernels_supported()
    d, i = jann.search(flat, jnp.asarray(xq), 3, backend="auto")
    assert np.asarray(i).shape == (5, 3)
