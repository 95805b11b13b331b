"""Scalar quantizer: shapes, FAISS parity (codes byte for byte, reconstruction error),
jit. Real data: Fashion-MNIST, trained on 5000 vectors, tested on 2000 held-out ones."""

import faiss
import jax
import numpy as np
import pytest

from jann.errors import InvalidDtypeError, InvalidInputError, NotTrainedError
from jann.quantizers.sq import QTYPES, ScalarQuantizer

ALL = list(QTYPES)


def faiss_sq(name, d, xtr):
    sq = faiss.ScalarQuantizer(d, getattr(faiss.ScalarQuantizer, QTYPES[name][0]))
    sq.train(np.ascontiguousarray(xtr))
    return sq


@pytest.fixture(scope="module")
def split(fmnist):
    base = fmnist["base"]
    return base[:5000], base[5000:7000]


@pytest.fixture(scope="module")
def encode_jit():
    return jax.jit(lambda codec, x: codec.encode(x))


@pytest.fixture(scope="module")
def decode_jit():
    return jax.jit(lambda codec, c: codec.decode(c))


@pytest.mark.parametrize("name", ALL)
def test_faiss_parity_fashion_mnist(name, split, encode_jit, decode_jit):
    xtr, xte = split
    d = xtr.shape[1]
    ref = faiss_sq(name, d, xtr)
    ref_codes = ref.compute_codes(xte)
    ref_rec = ref.decode(ref_codes)

    sq = ScalarQuantizer.create(d, name)
    assert sq.code_size == ref.code_size
    sq = sq.train(xtr)
    assert sq.is_trained
    codes = np.asarray(encode_jit(sq, xte))
    assert codes.dtype == np.uint8 and codes.shape == (len(xte), ref.code_size)
    np.testing.assert_array_equal(codes, ref_codes)  # byte for byte, every type
    rec = np.asarray(decode_jit(sq, codes))
    assert rec.dtype == np.float32 and rec.shape == xte.shape
    # decode may differ from FAISS by an ulp (fused multiply-add on either side)
    np.testing.assert_allclose(rec, ref_rec, rtol=1e-6, atol=1e-4)
    mse, ref_mse = np.mean((rec - xte) ** 2), np.mean((ref_rec - xte) ** 2)
    assert mse <= 1.05 * ref_mse + 1e-12, (mse, ref_mse)
    # eager path gives the same codes
    np.testing.assert_array_equal(np.asarray(sq.encode(xte[:50])), ref_codes[:50])


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("d", [5, 7])
def test_faiss_parity_odd_dims_and_out_of_range(name, d, rng, encode_jit, decode_jit):
    """Partial 4-bit bytes and 6-bit groups, values outside the training range (clipped),
    a constant training dimension (vdiff = 0), ranges that are not round numbers."""
    xtr = (rng.standard_normal((500, d)) * 3.7 + 100).astype(np.float32)
    xtr[:, 0] = 2.5
    xte = (rng.standard_normal((300, d)) * 5 + 100).astype(np.float32)
    if name == "SQ8_direct":
        xtr, xte = np.abs(xtr) % 256, np.abs(xte) % 256
    ref = faiss_sq(name, d, xtr)
    sq = ScalarQuantizer.create(d, name).train(xtr)
    assert sq.code_size == ref.code_size
    codes = np.asarray(encode_jit(sq, xte))
    np.testing.assert_array_equal(codes, ref.compute_codes(xte))
    np.testing.assert_allclose(np.asarray(decode_jit(sq, codes)), ref.decode(codes),
                               rtol=1e-6, atol=1e-5)


def _round_half_away(x, name):
    """float32 -> half precision as FAISS's software conversions define it: nearest,
    ties away from zero (not IEEE's ties-to-even), denormals kept, overflow to +-inf.
    (bits as uint16, whether each value was an exact tie)."""
    bits = x.view(np.uint32)
    if name == "SQbf16":  # encode_bf16: (bits + 0x8000) >> 16, inf kept
        finite = np.isfinite(x)
        out = np.where(finite, (bits.astype(np.uint64) + 0x8000) >> 16, bits >> 16)
        return out.astype(np.uint16), finite & ((bits & 0xFFFF) == 0x8000)
    with np.errstate(over="ignore"):
        near = x.astype(np.float16)  # IEEE: ties to even; past the largest half: inf
    xd = x.astype(np.float64)
    side = np.where(xd > near.astype(np.float64), np.nextafter(near, np.float16(np.inf)),
                    np.nextafter(near, np.float16(-np.inf)))
    tie = (xd != near) & (np.abs(xd - near.astype(np.float64))
                          == np.abs(side.astype(np.float64) - xd))
    away = np.where(np.abs(side.astype(np.float64)) > np.abs(near.astype(np.float64)),
                    side, near)
    return np.where(tie, away, near).view(np.uint16), tie


@pytest.mark.parametrize("name", ["SQfp16", "SQbf16"])
def test_half_precision_rounding_is_faiss_software_rounding(name, rng):
    """Arbitrary float32 bit patterns (denormals, ties, overflow, inf) round as FAISS's
    software conversions are defined (ties away from zero, denormals kept), checked
    against that definition in numpy. faiss-cpu itself is compared only where every
    build agrees: a CPU with AVX512-BF16 / F16C conversions rounds ties to even and
    flushes denormals, so faiss's answer there depends on the machine."""
    bits = rng.integers(0, 2**32, size=(500, 64), dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    x = np.where(np.isnan(x), np.float32(0), x).astype(np.float32)
    scaled = (rng.standard_normal((500, 64)) * np.exp2(rng.integers(-30, 20, (500, 64))))
    ties = np.round(rng.standard_normal((500, 64)) * 4096) / 4096 * (1 + 2.0**-11)
    ref = faiss_sq(name, 64, x[:10])
    sq = ScalarQuantizer.create(64, name)
    assert sq.is_trained  # nothing to learn
    tiny = np.float32(2.0**-14 if name == "SQfp16" else np.finfo(np.float32).tiny)
    for data in (x, scaled.astype(np.float32), ties.astype(np.float32)):
        codes = np.asarray(sq.encode(data))
        want, tie = _round_half_away(data, name)
        np.testing.assert_array_equal(codes.view(np.uint16), want)
        widened = np.asarray(sq.decode(codes))
        if name == "SQbf16":  # widening is exact: the bits shifted back
            expected = (want.astype(np.uint32) << 16).view(np.float32)
        else:
            expected = want.view(np.float16).astype(np.float32)
        np.testing.assert_array_equal(widened.view(np.uint32), expected.view(np.uint32))
        same_everywhere = ~tie & (np.abs(data) >= tiny)
        faiss_codes = ref.compute_codes(data).view(np.uint16)
        np.testing.assert_array_equal(codes.view(np.uint16)[same_everywhere],
                                      faiss_codes[same_everywhere])
    if name == "SQfp16":
        assert tie.any()  # the last set holds exact fp16 ties


def test_packing_layout():
    """4-bit: value i in byte i // 2, low nibble first; 6-bit: LSB-first bit stream."""
    sq4 = ScalarQuantizer.create(3, "SQ4_uniform").train(np.array([[0.0] * 3, [15.0] * 3],
                                                                  np.float32))
    codes = np.asarray(sq4.encode(np.array([[1.0, 2.0, 15.0]], np.float32)))
    np.testing.assert_array_equal(codes, [[1 | (2 << 4), 15]])
    sq6 = ScalarQuantizer.create(5, "SQ6").train(
        np.array([[0.0] * 5, [63.0] * 5], np.float32))
    values = np.array([[1, 2, 3, 4, 63]], np.float32)
    codes = np.asarray(sq6.encode(values))
    assert codes.shape == (1, 4)
    stream = sum(int(v) << (6 * i) for i, v in enumerate(values[0]))
    np.testing.assert_array_equal(codes[0], [(stream >> (8 * j)) & 0xFF for j in range(4)])
    np.testing.assert_allclose(np.asarray(sq6.decode(codes)), values + 0.5, atol=1e-5)


@pytest.mark.parametrize("name", ["SQ8", "SQ6"])
def test_codes_exact_under_vmap_and_closure(name, split):
    """XLA turns a division by a broadcast into a multiplication by a reciprocal; the
    encoder must keep FAISS's exact quotient however it is traced."""
    xtr, xte = split
    ref = faiss_sq(name, xtr.shape[1], xtr).compute_codes(xte[:500])
    sq = ScalarQuantizer.create(xtr.shape[1], name).train(xtr)
    closure = jax.jit(lambda x: sq.encode(x))(xte[:500])
    per_row = jax.jit(jax.vmap(lambda c, x: c.encode(x[None])[0], in_axes=(None, 0)))(
        sq, xte[:500])
    np.testing.assert_array_equal(np.asarray(closure), ref)
    np.testing.assert_array_equal(np.asarray(per_row), ref)


def test_pytree_round_trip_and_jit(split):
    xtr, xte = split
    sq = ScalarQuantizer.create(xtr.shape[1], "SQ8").train(xtr)
    leaves, treedef = jax.tree.flatten(sq)
    assert len(leaves) == 2
    again = jax.tree.unflatten(treedef, leaves)
    np.testing.assert_array_equal(np.asarray(again.encode(xte[:5])),
                                  np.asarray(sq.encode(xte[:5])))
    # reconstruct inside a user's jitted function
    rec = jax.jit(lambda c, x: c.reconstruct(x))(sq, xte[:5])
    np.testing.assert_allclose(np.asarray(rec), xte[:5], atol=float(np.max(sq.vdiff)) / 255)


def test_checkpoint_round_trip(split):
    from jann import checkpoint

    xtr, xte = split
    for name in ("SQ6", "SQfp16"):
        sq = ScalarQuantizer.create(xtr.shape[1], name).train(xtr)
        back = checkpoint.deserialize(checkpoint.serialize(sq))
        assert back.qtype == name and back.is_trained
        np.testing.assert_array_equal(np.asarray(back.encode(xte[:20])),
                                      np.asarray(sq.encode(xte[:20])))


def test_errors():
    with pytest.raises(InvalidInputError, match="SQ8.*SQ4.*SQfp16"):
        ScalarQuantizer.create(8, "SQ3")
    sq = ScalarQuantizer.create(8, "QT_8bit")  # FAISS's name is accepted too
    assert sq.qtype == "SQ8" and not sq.is_trained
    with pytest.raises(NotTrainedError):
        sq.encode(np.zeros((1, 8), np.float32))
    with pytest.raises(InvalidInputError):
        sq.train(np.zeros((10, 7), np.float32))
    sq = sq.train(np.arange(16, dtype=np.float32).reshape(2, 8))
    with pytest.raises(InvalidInputError):
        sq.decode(np.zeros((1, 7), np.uint8))
    with pytest.raises(InvalidDtypeError):
        sq.decode(np.zeros((1, 8), np.int32))
    with pytest.raises(InvalidInputError):
        sq.encode(np.zeros((1, 9), np.float32))
