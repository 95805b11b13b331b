"""Binary codes: packing order, exact Hamming distances and streamed Hamming k-NN.

Oracles: numpy (np.packbits / np.unpackbits, a stable argsort for ties by lower id) and
faiss-cpu (`real_to_binary`, `IndexBinaryFlat`)."""

import faiss
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jann.errors import InvalidDtypeError, InvalidInputError
from jann.ops import hamming


def np_hamming(a, b):
    bits_a = np.unpackbits(a, axis=1).astype(np.int32)
    bits_b = np.unpackbits(b, axis=1).astype(np.int32)
    return (bits_a[:, None, :] != bits_b[None, :, :]).sum(-1)


def np_knn(a, b, k, valid=None):
    """Distances and ids, ties by lower id, -1 / INT32_MAX beyond the candidates."""
    dist = np_hamming(a, b).astype(np.int64)
    if valid is not None:
        dist[:, ~valid] = np.iinfo(np.int64).max
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    d = np.take_along_axis(dist, order, 1)
    ids = np.where(d == np.iinfo(np.int64).max, -1, order)
    d = np.where(ids < 0, hamming.MISSING_DISTANCE, d)
    pad = k - d.shape[1]
    d = np.pad(d, ((0, 0), (0, pad)), constant_values=hamming.MISSING_DISTANCE)
    ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
    return d.astype(np.int32), ids.astype(np.int32)


@pytest.fixture(scope="module")
def fm_codes(fmnist):
    """256-bit codes of real data: signs of a random projection of centred vectors."""
    x = fmnist["base"][:6000].astype(np.float64)
    q = fmnist["queries"][:200].astype(np.float64)
    mean = x.mean(0)
    proj = np.random.default_rng(0).standard_normal((x.shape[1], 256))
    xb = np.packbits((x - mean) @ proj > 0, axis=1, bitorder="little")
    xq = np.packbits((q - mean) @ proj > 0, axis=1, bitorder="little")
    return xq, xb


# --- packing ------------------------------------------------------------------------------

@pytest.mark.parametrize("nbits", [8, 13, 64, 256])
def test_pack_unpack_round_trip_and_lsb_first(rng, nbits):
    bits = rng.random((50, nbits)) < 0.5
    packed = np.asarray(hamming.pack_bits(bits))
    assert packed.dtype == np.uint8 and packed.shape == (50, -(-nbits // 8))
    np.testing.assert_array_equal(packed, np.packbits(bits, axis=1, bitorder="little"))
    np.testing.assert_array_equal(np.asarray(hamming.unpack_bits(packed, nbits)), bits)
    # bit j is byte j // 8, bit j % 8
    one = np.zeros((1, nbits), bool)
    one[0, nbits - 1] = True
    code = np.asarray(hamming.pack_bits(one))[0]
    assert code[(nbits - 1) // 8] == 1 << ((nbits - 1) % 8) and code.sum() == code.max()


def test_pack_bits_matches_faiss_real_to_binary(rng):
    x = rng.standard_normal((20, 64)).astype(np.float32)
    ref = np.zeros((20, 8), np.uint8)
    faiss.real_to_binary(x.size, faiss.swig_ptr(x), faiss.swig_ptr(ref))
    np.testing.assert_array_equal(np.asarray(hamming.pack_bits(x > 0)), ref)


def test_pack_bits_jits():
    bits = jnp.asarray(np.eye(16, dtype=bool))
    np.testing.assert_array_equal(jax.jit(hamming.pack_bits)(bits), hamming.pack_bits(bits))


# --- distances ----------------------------------------------------------------------------

@pytest.mark.parametrize("code_size", [1, 3, 8, 13, 32])
def test_distances_equal_numpy_popcount(rng, code_size):
    a = rng.integers(0, 256, (37, code_size), dtype=np.uint8)
    b = rng.integers(0, 256, (53, code_size), dtype=np.uint8)
    d = np.asarray(hamming.hamming_distances(a, b))
    assert d.dtype == np.int32
    np.testing.assert_array_equal(d, np_hamming(a, b))


def test_distances_real_codes(fm_codes):
    xq, xb = fm_codes
    np.testing.assert_array_equal(np.asarray(hamming.hamming_distances(xq[:50], xb[:500])),
                                  np_hamming(xq[:50], xb[:500]))


# --- k-NN ---------------------------------------------------------------------------------

def test_knn_ties_by_lower_id_many_tiles(rng):
    # 1-byte codes: distances 0..8 over 1000 codes, so almost every result is tied.
    xb = rng.integers(0, 256, (1000, 1), dtype=np.uint8)
    xq = rng.integers(0, 256, (70, 1), dtype=np.uint8)
    ref_d, ref_i = np_knn(xq, xb, 25)
    # tile 96 leaves a ragged last tile (1000 = 10 * 96 + 40); query_block 32 pads queries
    d, i = hamming.knn_hamming(xq, xb, 25, tile=96, query_block=32)
    np.testing.assert_array_equal(np.asarray(d), ref_d)
    np.testing.assert_array_equal(np.asarray(i), ref_i)
    d, i = hamming.knn_hamming_reference(xq, xb, 25)
    np.testing.assert_array_equal(np.asarray(d), ref_d)
    np.testing.assert_array_equal(np.asarray(i), ref_i)


def test_knn_default_tiles_real_codes(fm_codes):
    xq, xb = fm_codes
    ref_d, ref_i = np_knn(xq, xb, 10)
    d, i = hamming.knn_hamming(xq, xb, 10)
    assert d.dtype == jnp.int32 and i.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(d), ref_d)
    np.testing.assert_array_equal(np.asarray(i), ref_i)


def test_knn_k_larger_than_n_and_valid_mask(rng):
    xb = rng.integers(0, 256, (11, 4), dtype=np.uint8)
    xq = rng.integers(0, 256, (5, 4), dtype=np.uint8)
    valid = rng.random(11) < 0.6
    for kw, ref in [({}, np_knn(xq, xb, 16)),
                    ({"xb_valid": valid}, np_knn(xq, xb, 16, valid))]:
        for fn in (hamming.knn_hamming, hamming.knn_hamming_reference):
            d, i = fn(xq, xb, 16, **kw)
            np.testing.assert_array_equal(np.asarray(d), ref[0])
            np.testing.assert_array_equal(np.asarray(i), ref[1])
        d, i = hamming.knn_hamming(xq, xb, 16, tile=4, **kw)
        np.testing.assert_array_equal(np.asarray(i), ref[1])
    d, i = hamming.knn_hamming(xq, xb, 16)
    assert (np.asarray(i)[:, 11:] == -1).all()
    assert (np.asarray(d)[:, 11:] == np.iinfo(np.int32).max).all()


def test_knn_equals_faiss_index_binary_flat(fm_codes):
    xq, xb = fm_codes
    index = faiss.IndexBinaryFlat(256)
    index.add(xb)
    ref_d, ref_i = index.search(xq, 20)
    d, i = hamming.knn_hamming(xq, xb, 20)
    d, i = np.asarray(d), np.asarray(i)
    np.testing.assert_array_equal(d, ref_d)
    # ids: FAISS's heap orders ties arbitrarily; each returned id must have its distance.
    full = np_hamming(xq, xb)
    np.testing.assert_array_equal(np.take_along_axis(full, i, 1), d)
    untied = ref_d[:, :-1] != ref_d[:, 1:]
    untied = np.concatenate([untied[:, :1], untied[:, 1:] & untied[:, :-1]], 1)
    np.testing.assert_array_equal(i[:, :-1][untied], ref_i[:, :-1][untied])


def test_knn_faiss_missing_results(rng):
    xb = rng.integers(0, 256, (3, 32), dtype=np.uint8)
    index = faiss.IndexBinaryFlat(256)
    index.add(xb)
    ref_d, ref_i = index.search(xb, 6)
    d, i = hamming.knn_hamming(xb, xb, 6)
    np.testing.assert_array_equal(np.asarray(d), ref_d)
    np.testing.assert_array_equal(np.asarray(i), ref_i)


def test_knn_scan_inside_jit(rng):
    xb = rng.integers(0, 256, (300, 8), dtype=np.uint8)
    xq = rng.integers(0, 256, (9, 8), dtype=np.uint8)
    fn = jax.jit(lambda q, b: hamming.knn_hamming_scan(q, b, 7, tile=64))
    d, i = fn(xq, xb)
    ref_d, ref_i = np_knn(xq, xb, 7)
    np.testing.assert_array_equal(np.asarray(d), ref_d)
    np.testing.assert_array_equal(np.asarray(i), ref_i)


# --- validation ---------------------------------------------------------------------------

def test_validation_errors(rng):
    a = rng.integers(0, 256, (4, 8), dtype=np.uint8)
    with pytest.raises(InvalidDtypeError):
        hamming.hamming_distances(a.astype(np.float32), a)
    with pytest.raises(InvalidDtypeError):
        hamming.knn_hamming(a, a.astype(np.int32), 2)
    with pytest.raises(InvalidInputError, match="code sizes"):
        hamming.knn_hamming(a, a[:, :4], 2)
    with pytest.raises(InvalidInputError):
        hamming.knn_hamming(a[0], a, 2)
    with pytest.raises(InvalidInputError):
        hamming.knn_hamming(a, a, 0)
    with pytest.raises(InvalidInputError):
        hamming.knn_hamming(a, a, 2, xb_valid=np.ones(3, bool))
    with pytest.raises(InvalidInputError):
        hamming.unpack_bits(a, 65)
