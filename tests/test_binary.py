"""Binary indexes: BFlat, BIVF, BHash exact against a numpy popcount oracle (ties by id),
the binary graph's recall, the float -> binary factory routes, and bad input."""

import numpy as np
import pytest

import jann

K = 10
NBITS = 64


def oracle(xq, xb, k, allowed=None):
    """numpy popcount of xor; ties by lower id."""
    table = np.array([i.bit_count() for i in range(256)])
    dist = table[np.bitwise_xor(xq[:, None, :], xb[None, :, :])].sum(-1)
    if allowed is not None:
        dist = np.where(allowed[None, :], dist, np.iinfo(np.int64).max)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(dist, order, 1), order


@pytest.fixture(scope="module")
def codes(fmnist):
    """Real binary codes: sign bits of a random projection of Fashion-MNIST (few distinct
    distances, so plenty of ties)."""
    rng = np.random.default_rng(0)
    proj = rng.standard_normal((fmnist["base"].shape[1], NBITS)).astype(np.float32)
    x = fmnist["base"][:3000] - fmnist["base"][:3000].mean(0)
    xq = fmnist["queries"][:100] - fmnist["base"][:3000].mean(0)
    return np.packbits(x @ proj > 0, 1, bitorder="little"), \
        np.packbits(xq @ proj > 0, 1, bitorder="little")


def check_exact(D, I, xq, xb, k=K, allowed=None):
    ref_d, ref_i = oracle(xq, xb, k, allowed)
    np.testing.assert_array_equal(np.asarray(D), ref_d.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(I), ref_i)


def test_bflat_exact_with_ties(codes):
    xb, xq = codes
    index = jann.add(jann.index_factory(NBITS, "BFlat"), xb)
    check_exact(*jann.search(index, xq, K), xq, xb)
    sel = jann.IDSelectorRange(500, 900)
    allowed = (np.arange(len(xb)) >= 500) & (np.arange(len(xb)) < 900)
    check_exact(*jann.search(index, xq, K, selector=sel), xq, xb, allowed=allowed)
    np.testing.assert_array_equal(np.asarray(jann.reconstruct(index, [7, 9])), xb[[7, 9]])


def test_bivf_all_lists_is_exact(codes):
    xb, xq = codes
    index = jann.index_factory(NBITS, "BIVF16")
    index = jann.add(jann.train(index, xb), xb)
    check_exact(*jann.search(index, xq, K, nprobe=16), xq, xb)
    _, ids = jann.search(index, xq, K, nprobe=4)
    _, gt = oracle(xq, xb, K)
    hits = np.mean([len(set(a) & set(b)) / K for a, b in zip(np.asarray(ids), gt)])
    assert hits >= 0.5
    index, n = jann.remove_ids(index, np.arange(0, 3000, 2))
    assert n == 1500
    _, ids = jann.search(index, xq, K, nprobe=16)
    assert (np.asarray(ids) % 2 == 1).all()
    # removals keep ids, so new rows are numbered after every id ever given
    _, ids = jann.search(jann.add(index, xb[:1]), xb[:1], 1, nprobe=16)
    assert np.asarray(ids)[0, 0] == len(xb)


def test_bhash_full_flip_is_exact(codes):
    xb, xq = codes
    index = jann.add(jann.index_factory(NBITS, "BHash6"), xb)
    check_exact(*jann.search(index, xq, K, nflip=6), xq, xb)
    _, I = jann.search(index, xq, K, nflip=0)  # exact-match bucket only
    prefix = lambda c: c[:, 0] & 63
    got = np.asarray(I)
    for row, ids in enumerate(got):
        ids = ids[ids >= 0]
        assert (prefix(xb[ids]) == prefix(xq[row:row + 1])).all()


def test_binary_graph_recall(codes):
    xb, xq = codes
    index = jann.add(jann.index_factory(NBITS, "BHNSW16"), xb)
    D, I = jann.search(index, xq, K, ef=64)
    ref_d, _ = oracle(xq, xb, K)
    # Hamming ties make ids ambiguous: compare the distance profile instead.
    assert np.mean(np.asarray(D) == ref_d) >= 0.95
    table = np.array([i.bit_count() for i in range(256)])
    ids = np.asarray(I)
    exact = table[np.bitwise_xor(xq[:, None, :], xb[ids])].sum(-1)
    np.testing.assert_array_equal(np.asarray(D), exact)  # distances are exact popcounts


@pytest.mark.parametrize("description", ["ITQ64,BFlat", "LSH64r,BFlat", "PCA32,ITQ32,BHNSW8"])
def test_float_to_binary_routes(fmnist, description):
    xb, xq = fmnist["base"][:2000], fmnist["queries"][:20]
    index = jann.index_factory(xb.shape[1], description)
    index = jann.add(jann.train(index, xb), xb)
    D, I = jann.search(index, xq, K)
    codes_b = np.asarray(index.transform.apply(xb))
    codes_q = np.asarray(index.transform.apply(xq))
    if description.endswith("BFlat"):
        check_exact(D, I, codes_q, codes_b)
    else:
        ref_d, _ = oracle(codes_q, codes_b, K)
        assert np.mean(np.asarray(D) == ref_d) >= 0.9


def test_binary_bad_input(codes):
    xb, _ = codes
    index = jann.index_factory(NBITS, "BFlat")
    with pytest.raises(jann.InvalidDtypeError):
        jann.add(index, xb.astype(np.int32))
    with pytest.raises(jann.InvalidInputError):
        jann.add(index, xb[:, :4])  # 32 bits for a 64-bit index
    for s in ("BFlat", "BIVF4", "BHNSW8", "BHash4"):
        with pytest.raises(jann.FactoryStringError):
            jann.index_factory(60, s)  # not a whole number of bytes
    graph = jann.index_factory(NBITS, "BHNSW8")
    with pytest.raises(jann.InvalidDtypeError):
        jann.search(jann.add(graph, xb[:100]), xb[:2].astype(np.float32), 3)
    hashed = jann.add(jann.index_factory(NBITS, "BHash6"), xb[:100])
    with pytest.raises(jann.InvalidInputError):
        jann.search(hashed, xb[:2], 3, nprobe=2)
