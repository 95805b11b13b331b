"""Transforms: PCA (against numpy SVD and faiss.PCAMatrix), whitening, random rotations,
ITQ, chains, factory forms. Real data: Fashion-MNIST, trained on 5000 vectors, tested on
2000 held-out ones."""

import faiss
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jann.errors import FactoryStringError, InvalidInputError, NotTrainedError
from jann.ops.hamming import pack_bits
from jann.transforms import (
    Chain, ITQMatrix, ITQTransform, PCAMatrix, RandomRotationMatrix, binarize, binary_codes,
    binary_quantization_loss, parse_transform, random_orthogonal)

D_OUT = 64


@pytest.fixture(scope="module")
def split(fmnist):
    base = fmnist["base"]
    return base[:5000], base[5000:7000]


@pytest.fixture(scope="module")
def svd(split):
    """float64 numpy PCA of the training set: mean, variances (descending), components
    (the right singular vectors of the centred data, from its scatter matrix)."""
    xtr, _ = split
    xc = xtr.astype(np.float64) - xtr.astype(np.float64).mean(0)
    var, vecs = np.linalg.eigh(xc.T @ xc / len(xtr))
    return xtr.astype(np.float64).mean(0), var[::-1], vecs[:, ::-1].T


@pytest.fixture(scope="module")
def pca(split):
    return PCAMatrix.create(split[0].shape[1], D_OUT).train(split[0])


@pytest.fixture(scope="module")
def apply_jit():
    return jax.jit(lambda t, x: t.apply(x))


def assert_equal_up_to_sign(y, ref, rtol):
    """Columns of y equal those of ref up to one sign per column, relative to its scale."""
    signs = np.sign(np.sum(y * ref, axis=0))
    scale = np.abs(ref).max(axis=0)
    err = np.abs(y - ref * signs).max(axis=0) / scale
    assert err.max() < rtol, err.max()


# --- PCA ----------------------------------------------------------------------------------

def test_pca_matches_numpy_svd(pca, svd, split):
    xtr, xte = split
    mean, var, vt = svd
    ev = np.asarray(pca.eigenvalues, np.float64)
    np.testing.assert_allclose(ev[:D_OUT], var[:D_OUT], rtol=1e-3)
    np.testing.assert_allclose(float(pca.explained_variance_ratio()),
                               var[:D_OUT].sum() / var.sum(), rtol=1e-3)
    comps = np.asarray(pca.components, np.float64)
    np.testing.assert_allclose(comps @ comps.T, np.eye(D_OUT), atol=1e-5)
    # projections equal numpy's up to sign per component
    ref = (xte - mean) @ vt[:D_OUT].T
    assert_equal_up_to_sign(np.asarray(pca.apply(xte), np.float64), ref, 1e-3)
    # reverse = transpose plus mean: the PCA reconstruction
    rec = np.asarray(pca.reverse(pca.apply(xte)), np.float64)
    ref_rec = ref @ vt[:D_OUT] + mean
    err, ref_err = np.mean((rec - xte) ** 2), np.mean((ref_rec - xte) ** 2)
    assert abs(err - ref_err) <= 1e-3 * ref_err, (err, ref_err)
    np.testing.assert_allclose(rec, ref_rec, atol=1e-3 * np.abs(xte).max())


def test_pca_matches_faiss_up_to_sign(pca, split, apply_jit):
    xtr, xte = split
    ref = faiss.PCAMatrix(xtr.shape[1], D_OUT)
    ref.train(xtr)
    y = np.asarray(apply_jit(pca, xte))
    assert y.shape == (len(xte), D_OUT) and y.dtype == np.float32
    assert_equal_up_to_sign(y, ref.apply(xte), 1e-3)
    # same affine map as FAISS's A, b (up to the row signs)
    A_ref = faiss.vector_to_array(ref.A).reshape(D_OUT, -1)
    signs = np.sign(np.sum(np.asarray(pca.A) * A_ref, axis=1))
    np.testing.assert_allclose(np.asarray(pca.A), A_ref * signs[:, None], atol=1e-3)
    np.testing.assert_allclose(np.asarray(pca.b), faiss.vector_to_array(ref.b) * signs,
                               rtol=1e-3, atol=1e-2)


def test_whitening_unit_variance_and_faiss(split, svd):
    xtr, xte = split
    pw = PCAMatrix.create(xtr.shape[1], D_OUT, eigen_power=-0.5).train(xtr)
    y = np.asarray(pw.apply(xtr), np.float64)
    np.testing.assert_allclose(y.var(axis=0), 1.0, rtol=1e-3)
    np.testing.assert_allclose(y.mean(axis=0), 0.0, atol=1e-3)
    # FAISS's eigenvalues are the scatter (n times the variance): its output is ours / sqrt(n)
    ref = faiss.PCAMatrix(xtr.shape[1], D_OUT, -0.5)
    ref.train(xtr)
    assert_equal_up_to_sign(np.asarray(pw.apply(xte)), ref.apply(xte) * np.sqrt(len(xtr)),
                            2e-3)
    # reverse undoes the scaling: back to the plain PCA reconstruction
    mean, _, vt = svd
    rec = np.asarray(pw.reverse(pw.apply(xte)), np.float64)
    ref_rec = (xte - mean) @ vt[:D_OUT].T @ vt[:D_OUT] + mean
    np.testing.assert_allclose(rec, ref_rec, atol=1e-3 * np.abs(xte).max())


def test_pca_random_rotation(split, pca):
    xtr, xte = split
    pr = PCAMatrix.create(xtr.shape[1], D_OUT, random_rotation=True).train(
        xtr, key=jax.random.key(7))
    R = np.asarray(pr.rotation, np.float64)
    np.testing.assert_allclose(R @ R.T, np.eye(D_OUT), atol=1e-5)
    assert not np.allclose(R, np.eye(D_OUT))
    y = np.asarray(pr.apply(xte), np.float64)
    np.testing.assert_allclose(y, np.asarray(pca.apply(xte), np.float64) @ R.T,
                               atol=1e-3 * np.abs(y).max())
    # rows of A stay orthonormal, so reverse(apply) is the PCA reconstruction
    np.testing.assert_allclose(np.asarray(pr.reverse(pr.apply(xte))),
                               np.asarray(pca.reverse(pca.apply(xte))), atol=0.05)
    again = PCAMatrix.create(xtr.shape[1], D_OUT, random_rotation=True).train(
        xtr, key=jax.random.key(7))
    np.testing.assert_array_equal(np.asarray(again.rotation), np.asarray(pr.rotation))


def test_square_pca_reverse_is_inverse(split):
    xtr, xte = split
    full = PCAMatrix.create(xtr.shape[1], xtr.shape[1]).train(xtr)
    np.testing.assert_allclose(np.asarray(full.reverse(full.apply(xte))), xte,
                               atol=1e-3 * np.abs(xte).max())


# --- random rotation ----------------------------------------------------------------------

@pytest.mark.parametrize("d_in,d_out", [(64, 64), (196, 64), (64, 100)])
def test_random_rotation_orthonormal_and_keyed(d_in, d_out, rng, apply_jit):
    rr = RandomRotationMatrix.random(d_in, d_out, key=jax.random.key(3))
    M = np.asarray(rr.matrix, np.float64)
    assert M.shape == (d_out, d_in)
    if d_out <= d_in:
        np.testing.assert_allclose(M @ M.T, np.eye(d_out), atol=1e-5)
    else:
        np.testing.assert_allclose(M.T @ M, np.eye(d_in), atol=1e-5)
    same = RandomRotationMatrix.create(d_in, d_out).train(key=jax.random.key(3))
    np.testing.assert_array_equal(np.asarray(same.matrix), np.asarray(rr.matrix))
    other = RandomRotationMatrix.random(d_in, d_out, key=jax.random.key(4))
    assert np.abs(np.asarray(other.matrix) - M).max() > 0.1
    x = rng.standard_normal((30, d_in)).astype(np.float32)
    y = np.asarray(apply_jit(rr, x))
    np.testing.assert_allclose(y, x @ M.T, rtol=1e-5, atol=1e-5)
    if d_out >= d_in:  # square or tight frame: reverse is the exact inverse
        np.testing.assert_allclose(np.asarray(rr.reverse(y)), x, atol=1e-5)


def test_random_orthogonal_is_not_biased(rng):
    """Signs fixed by R's diagonal: the mean of many draws is near zero (Haar)."""
    keys = jax.random.split(jax.random.key(0), 200)
    mats = jax.vmap(lambda k: random_orthogonal(k, 8))(keys)
    assert float(jnp.abs(jnp.mean(mats, axis=0)).max()) < 0.2


# --- ITQ ----------------------------------------------------------------------------------

def test_itq_lowers_binary_quantization_loss(split):
    xtr, xte = split
    xtr = xtr[:3000]
    itq = ITQTransform.create(xtr.shape[1], D_OUT).train(xtr, key=jax.random.key(1))
    assert itq.is_trained and itq.do_pca
    R = np.asarray(itq.itq.rotation, np.float64)
    np.testing.assert_allclose(R @ R.T, np.eye(D_OUT), atol=1e-4)
    for x in (xtr, xte):
        v = itq.pca_stage(x)  # centred, normalised, PCA-projected
        pca_loss = float(binary_quantization_loss(v))
        start_loss = float(binary_quantization_loss(
            v @ random_orthogonal(jax.random.key(1), D_OUT)))
        loss = float(binary_quantization_loss(itq.apply(x)))
        assert loss < 0.95 * pca_loss and loss < start_loss, (loss, pca_loss, start_loss)
    # as good as FAISS's ITQTransform (within 2%) on held-out data
    ref = faiss.ITQTransform(xtr.shape[1], D_OUT, True)
    ref.train(xtr)
    ref_loss = float(binary_quantization_loss(ref.apply(xte)))
    assert loss < 1.02 * ref_loss, (loss, ref_loss)


def test_itq_matrix_alone(rng):
    v = rng.standard_normal((400, 16)).astype(np.float32) * np.linspace(3, 0.5, 16)
    itq = ITQMatrix.create(16).train(v, key=jax.random.key(0))
    r0 = random_orthogonal(jax.random.key(0), 16)
    assert float(binary_quantization_loss(itq.apply(v))) < float(
        binary_quantization_loss(v @ r0))
    np.testing.assert_allclose(np.asarray(itq.reverse(itq.apply(v))), v, atol=1e-4)
    again = ITQMatrix.create(16).train(v, key=jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(again.rotation), np.asarray(itq.rotation))
    other = ITQMatrix.create(16).train(v, key=jax.random.key(1))
    assert np.abs(np.asarray(other.rotation) - np.asarray(itq.rotation)).max() > 1e-3


# --- chain, binarisation, factory, errors ------------------------------------------------

def test_chain(split, pca):
    xtr, xte = split
    chain = Chain.create(PCAMatrix.create(xtr.shape[1], D_OUT),
                         RandomRotationMatrix.create(D_OUT))
    assert not chain.is_trained and chain.d_in == xtr.shape[1] and chain.d_out == D_OUT
    chain = chain.train(xtr, key=jax.random.key(2))
    assert chain.is_trained and chain.describe() == f"PCA{D_OUT},RR{D_OUT}"
    p, r = chain.transforms
    y = np.asarray(jax.jit(lambda c, x: c.apply(x))(chain, xte))
    np.testing.assert_allclose(y, np.asarray(r.apply(p.apply(xte))), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(np.asarray(chain.reverse(y)),
                               np.asarray(pca.reverse(pca.apply(xte))), atol=0.05)
    leaves, treedef = jax.tree.flatten(chain)
    rebuilt = jax.tree.unflatten(treedef, leaves)
    np.testing.assert_array_equal(np.asarray(rebuilt.apply(xte[:3])), y[:3])
    with pytest.raises(InvalidInputError):
        Chain.create(PCAMatrix.create(196, 64), RandomRotationMatrix.create(32))


def test_checkpoint_round_trip(split):
    """Every transform (nested ones and chains included) survives jann's checkpoints."""
    from jann import checkpoint

    xtr, xte = split
    for t in (PCAMatrix.create(196, 16, -0.5, True).train(xtr[:500], key=jax.random.key(0)),
              RandomRotationMatrix.random(196, 32, key=jax.random.key(1)),
              ITQTransform.create(196, 16).train(xtr[:500]),
              Chain.create(PCAMatrix.create(196, 32), ITQMatrix.create(32)).train(xtr[:500])):
        back = checkpoint.deserialize(checkpoint.serialize(t))
        assert type(back) is type(t) and back.is_trained
        np.testing.assert_array_equal(np.asarray(back.apply(xte[:5])),
                                      np.asarray(t.apply(xte[:5])))


def test_binarize_matches_faiss_real_to_binary(split, pca):
    _, xte = split
    y = np.ascontiguousarray(np.asarray(pca.apply(xte[:100])))
    ref = np.zeros((100, D_OUT // 8), np.uint8)
    faiss.real_to_binary(y.size, faiss.swig_ptr(y), faiss.swig_ptr(ref))
    np.testing.assert_array_equal(np.asarray(binary_codes(y)), ref)
    thresholds = np.median(y, axis=0)
    np.testing.assert_array_equal(np.asarray(binarize(y, thresholds)), y > thresholds)
    np.testing.assert_array_equal(np.asarray(binary_codes(y, thresholds)),
                                  np.asarray(pack_bits(y > thresholds)))


def test_parse_transform():
    for s, cls, d_out, attrs in [
            ("PCA64", PCAMatrix, 64, {"eigen_power": 0.0, "random_rotation": False}),
            ("PCAW64", PCAMatrix, 64, {"eigen_power": -0.5, "random_rotation": False}),
            ("PCAR32", PCAMatrix, 32, {"eigen_power": 0.0, "random_rotation": True}),
            ("PCAWR32", PCAMatrix, 32, {"eigen_power": -0.5, "random_rotation": True}),
            ("RR64", RandomRotationMatrix, 64, {}), ("RR", RandomRotationMatrix, 196, {}),
            ("ITQ64", ITQTransform, 64, {"do_pca": True}),
            ("ITQ", ITQTransform, 196, {"do_pca": False})]:
        t = parse_transform(s, 196)
        assert isinstance(t, cls) and t.d_in == 196 and t.d_out == d_out and not t.is_trained
        for name, value in attrs.items():
            assert getattr(t, name) == value
        assert t.describe() == (s if s not in ("RR", "ITQ") else f"{s}196")
    with pytest.raises(FactoryStringError, match="PCA<d>"):
        parse_transform("PCAX64", 196)


def test_errors(split):
    xtr, _ = split
    p = PCAMatrix.create(196, 64)
    with pytest.raises(NotTrainedError):
        p.apply(xtr[:2])
    with pytest.raises(InvalidInputError):
        p.train(xtr[:, :100])
    with pytest.raises(InvalidInputError):
        PCAMatrix.create(64, 65)
    with pytest.raises(InvalidInputError):
        ITQTransform.create(196, 64, do_pca=False)
    bad = xtr[:10].copy()
    bad[3, 5] = np.nan
    with pytest.raises(InvalidInputError):
        p.train(bad)


# --- L2norm and Pad (jann.fixed_transforms) ---------------------------------------------
@pytest.mark.parametrize("description, metric, plain", [
    ("L2norm,Flat", "ip", ("Flat", "cosine")), ("Pad256,Flat", "l2", ("Flat", "l2")),
    ("L2norm,IVF16,Flat", "ip", ("IVF16,Flat", "cosine")),
    ("Pad200,PCA32,Flat", "l2", ("PCA32,Flat", "l2"))])
def test_l2norm_and_pad_search_as_faiss_and_as_their_plain_forms(description, metric, plain,
                                                                  split, tmp_path):
    import jann
    xb, xq = split[0][:2000], split[1][:40]
    d = xb.shape[1]
    params = {"nprobe": 16} if "IVF" in description else {}
    index = jann.add(jann.train(jann.index_factory(d, description, metric), xb, key=0), xb)
    assert index.describe() == description
    D, I = jann.search(index, xq, 10, **params)
    same = jann.add(jann.train(jann.index_factory(d, *plain), xb, key=0), xb)
    D2, I2 = jann.search(same, xq, 10, **params)
    assert np.mean(np.asarray(I) == np.asarray(I2)) >= 0.99  # padding / normalising change
    np.testing.assert_allclose(np.asarray(D), np.asarray(D2), rtol=1e-4, atol=1e-4)  # nothing
    jann.save(index, tmp_path / "ix")
    np.testing.assert_array_equal(np.asarray(jann.search(jann.load(tmp_path / "ix"), xq, 10,
                                                         **params)[1]), np.asarray(I))
    theirs = faiss.index_factory(d, description, faiss.METRIC_INNER_PRODUCT if metric == "ip"
                                 else faiss.METRIC_L2)
    theirs.train(xb)
    theirs.add(xb)
    if params:
        faiss.extract_index_ivf(theirs).nprobe = 16
    read = jann.read_faiss(faiss.serialize_index(theirs))
    assert read.describe() == description
    assert np.mean(np.asarray(jann.search(read, xq, 10, **params)[1])
                   == theirs.search(xq, 10)[1]) >= 0.99
    written = faiss.deserialize_index(np.frombuffer(jann.write_faiss(index), np.uint8))
    if params:
        faiss.extract_index_ivf(written).nprobe = 16
    assert np.mean(written.search(xq, 10)[1] == np.asarray(I)) >= 0.99


def test_l2norm_and_pad_transforms_alone(rng):
    from jann.fixed_transforms import NormalizationTransform, RemapDimensions
    x = rng.standard_normal((5, 6)).astype(np.float32)
    x[2] = 0.0
    y = np.asarray(parse_transform("L2norm", 6).apply(x))
    np.testing.assert_allclose(np.linalg.norm(y[[0, 1, 3, 4]], axis=1), 1.0, rtol=1e-6)
    assert not y[2].any()
    assert isinstance(parse_transform("L2norm", 6), NormalizationTransform)
    pad = parse_transform("Pad8", 6)
    np.testing.assert_array_equal(np.asarray(pad.apply(x)), np.pad(x, ((0, 0), (0, 2))))
    np.testing.assert_array_equal(np.asarray(pad.reverse(pad.apply(x))), x)
    swap = RemapDimensions.create(6, [5, -1, 0])
    np.testing.assert_array_equal(np.asarray(swap.apply(x)),
                                  np.stack([x[:, 5], np.zeros(5), x[:, 0]], 1))
    assert swap.describe() == "Remap3"
    with pytest.raises(InvalidInputError, match="Pad4"):
        parse_transform("Pad4", 6)
    with pytest.raises(InvalidInputError):
        RemapDimensions.create(6, [6])
