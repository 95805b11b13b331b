"""Residual and product-residual quantizers: beam-search codes, reconstruction error
against faiss-cpu, inner-product tables and norms, jit, determinism and bad input."""

import dataclasses
import warnings

import faiss
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jann.errors import InvalidInputError, NotTrainedError
from jann.quantizers.rq import ProductResidualQuantizer, ResidualQuantizer

from conftest import MSE_TOLERANCE, mse

D = 196


@pytest.fixture(scope="module")
def trained(data):
    """RQ4x8 and PRQ2x2x8 (beam 5, FAISS's default) from jann and faiss, same data."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # 5000 < 39 * 256: the expected FAISS advice
        rq = ResidualQuantizer.create(D, 4, 8).train(data["train"], key=jax.random.key(0))
        prq = ProductResidualQuantizer.create(D, 2, 2, 8).train(data["train"],
                                                                key=jax.random.key(0))
    ref_rq = faiss.ResidualQuantizer(D, 4, 8)
    ref_rq.max_beam_size = 5
    ref_rq.train(data["train"])
    ref_prq = faiss.ProductResidualQuantizer(D, 2, 2, 8)    # sub-RQs: max_beam_size 5
    ref_prq.train(data["train"])
    return {"rq": (rq, ref_rq), "prq": (prq, ref_prq)}


@pytest.mark.parametrize("name", ["rq", "prq"])
def test_shapes_and_dtypes(trained, data, name):
    codec, _ = trained[name]
    codes = codec.encode(data["test"])
    assert codec.code_size == 4 and codes.shape == (2000, 4) and codes.dtype == jnp.uint8
    x_hat = codec.decode(codes)
    assert x_hat.shape == (2000, D) and x_hat.dtype == jnp.float32


@pytest.mark.parametrize("name", ["rq", "prq"])
def test_reconstruction_error_within_5_percent_of_faiss(trained, data, name):
    codec, ref = trained[name]
    ours = mse(codec.decode(codec.encode(data["test"])), data["test"])
    theirs = mse(ref.decode(ref.compute_codes(data["test"])), data["test"])
    assert ours <= MSE_TOLERANCE * theirs, (ours, theirs)


def test_beam_search_codes_equal_faiss_given_its_codebooks(trained, data):
    _, ref = trained["rq"]
    codebooks = faiss.vector_to_array(ref.codebooks).reshape(4, 256, D)
    rq = dataclasses.replace(ResidualQuantizer.create(D, 4, 8),
                             codebooks=jnp.asarray(codebooks), is_trained=True)
    x = data["test"][:500]
    np.testing.assert_array_equal(np.asarray(rq.encode(x)), ref.compute_codes(x))
    np.testing.assert_allclose(np.asarray(rq.decode(ref.compute_codes(x))),
                               ref.decode(ref.compute_codes(x)), rtol=1e-5, atol=1e-2)


def test_wider_beam_is_never_worse_on_average(trained, data):
    rq, _ = trained["rq"]
    x = data["test"][:500]
    errors = [mse(r.decode(r.encode(x)), x)
              for r in (dataclasses.replace(rq, beam_size=b) for b in (1, 5))]
    assert errors[1] <= errors[0]


@pytest.mark.parametrize("name", ["rq", "prq"])
def test_ip_tables_norms_and_l2(trained, data, name):
    codec, _ = trained[name]
    codes = codec.encode(data["test"][:500])
    tables = codec.distance_tables(data["queries"], "ip")
    assert tables.shape == (50, 4, 256) and tables.dtype == jnp.float32
    ip = np.asarray(codec.adc(tables, codes), np.float64)
    x_hat = np.asarray(codec.decode(codes), np.float64)
    q = data["queries"].astype(np.float64)
    want = q @ x_hat.T
    np.testing.assert_allclose(ip, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    norms = np.asarray(codec.norm(codes), np.float64)
    np.testing.assert_allclose(norms, (x_hat ** 2).sum(1), rtol=1e-5)
    # What an index does with them: squared L2 from the norms and the ip look-up.
    l2 = (q ** 2).sum(1)[:, None] - 2 * ip + norms[None]
    direct = ((q[:, None, :] - x_hat[None]) ** 2).sum(-1)
    np.testing.assert_allclose(l2, direct, rtol=1e-4, atol=1e-4 * direct.max())


@pytest.mark.parametrize("name", ["rq", "prq"])
def test_encode_decode_under_jit(trained, data, name):
    codec, _ = trained[name]
    x = data["test"][:300]
    codes = jax.jit(lambda c, v: c.encode(v))(codec, x)
    np.testing.assert_array_equal(np.asarray(codes), np.asarray(codec.encode(x)))
    np.testing.assert_allclose(np.asarray(jax.jit(lambda c, k: c.decode(k))(codec, codes)),
                               np.asarray(codec.decode(codes)), rtol=1e-6)


def test_same_key_same_codebooks_and_small_nbits_packing(data):
    x = data["train"][:500]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, b, c = (ResidualQuantizer.create(D, 3, 4).train(x, key=jax.random.key(s), niter=5)
                   for s in (3, 3, 4))
    np.testing.assert_array_equal(np.asarray(a.codebooks), np.asarray(b.codebooks))
    assert not np.array_equal(np.asarray(a.codebooks), np.asarray(c.codebooks))
    assert a.codebooks.shape == (3, 16, D) and a.code_size == 2      # 3 nibbles -> 2 bytes
    indices = np.asarray(a.encode_indices(data["test"][:100]))
    codes = np.asarray(a.encode(data["test"][:100]))
    assert codes.shape == (100, 2) and indices.max() < 16
    np.testing.assert_array_equal(codes[:, 0], indices[:, 0] | (indices[:, 1] << 4))
    np.testing.assert_array_equal(codes[:, 1], indices[:, 2])


def test_pytree_fields():
    prq = ProductResidualQuantizer.create(D, 2, 3, 6, beam_size=4)
    leaves, treedef = jax.tree.flatten(prq)
    assert len(leaves) == 1 and leaves[0].shape == (2, 3, 64, D // 2)
    rebuilt = jax.tree.unflatten(treedef, leaves)
    assert (rebuilt.nsplits, rebuilt.Msub, rebuilt.M, rebuilt.nbits, rebuilt.beam_size,
            rebuilt.code_size) == (2, 3, 6, 6, 4, 6)


def test_bad_input_errors(rng):
    for nbits in (0, 9):
        with pytest.raises(InvalidInputError, match="nbits"):
            ResidualQuantizer.create(D, 4, nbits)
    with pytest.raises(InvalidInputError, match="M must be a positive int"):
        ResidualQuantizer.create(D, 0)
    with pytest.raises(InvalidInputError, match="beam_size"):
        ResidualQuantizer.create(D, 4, beam_size=0)
    with pytest.raises(InvalidInputError, match="nsplits=3 must divide"):
        ProductResidualQuantizer.create(D, 3, 2)
    rq = ResidualQuantizer.create(8, 2, 6)
    with pytest.raises(InvalidInputError, match="at least 64"):
        rq.train(rng.standard_normal((50, 8)).astype(np.float32), key=jax.random.key(0))
    with pytest.raises(NotTrainedError):
        rq.encode(np.zeros((1, 8), np.float32))
    trained = dataclasses.replace(rq, is_trained=True)
    with pytest.raises(InvalidInputError, match="'ip' only"):
        trained.distance_tables(np.zeros((1, 8), np.float32), "l2")
    with pytest.warns(UserWarning, match="FAISS advises at least 156"):
        ResidualQuantizer.create(8, 2, 2).train(
            rng.standard_normal((100, 8)).astype(np.float32), key=jax.random.key(0), niter=2)
