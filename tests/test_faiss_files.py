"""FAISS index files without faiss. Read (jann.read_faiss): written by faiss-cpu, read by
jann, searched: the same ids and distances as faiss at the same nprobe; a truncated or
tampered file is a FileFormatError, with no allocation sized by a corrupt field. Written
(jann.write_faiss): built by jann, read by faiss-cpu, searched: the same ids as jann; the
bytes are what faiss itself writes for the index it read."""

import faiss
import jax
import numpy as np
import pytest

import jann
from conftest import assert_knn_equal
from jann import datasets

K = 10


@pytest.fixture(scope="module")
def data():
    d = datasets.load_embedded()
    return d["base"][:3000], d["queries"][:40]


def _faiss_index(spec, metric, xb, remove=()):
    index = faiss.index_factory(xb.shape[1], spec, metric)
    if "PQ" in spec:  # polysemous training only renumbers codes, and is most of the time
        inner = faiss.downcast_index(index.index if spec.startswith("IDMap") else index)
        faiss.downcast_index(faiss.extract_index_ivf(inner) if "IVF" in spec
                             else inner).do_polysemous_training = False
    if "OPQ" in spec:  # the file's content, not the rotation's quality, is under test
        faiss.downcast_VectorTransform(faiss.downcast_index(index).chain.at(0)).niter = 3
    index.train(xb)
    if spec.startswith("IDMap"):
        index.add_with_ids(xb, np.arange(len(xb)) * 7 + 1)
    else:
        index.add(xb)
    if len(remove):
        index.remove_ids(np.asarray(remove, np.int64))
    return index


CASES = [("Flat", faiss.METRIC_L2), ("Flat", faiss.METRIC_INNER_PRODUCT),
         ("IDMap,Flat", faiss.METRIC_L2), ("IDMap2,Flat", faiss.METRIC_INNER_PRODUCT),
         ("IVF32,Flat", faiss.METRIC_L2), ("IVF32,Flat", faiss.METRIC_INNER_PRODUCT),
         ("IDMap,IVF32,Flat", faiss.METRIC_L2), ("IDMap2,IVF32,Flat", faiss.METRIC_L2),
         ("IVF32,PQ14", faiss.METRIC_L2), ("IDMap,IVF32,PQ7", faiss.METRIC_L2),
         ("IVF32,PQ14", faiss.METRIC_INNER_PRODUCT), ("IVF32,SQ8", faiss.METRIC_L2),
         ("IVF32,SQ6", faiss.METRIC_INNER_PRODUCT), ("IVF32,SQfp16", faiss.METRIC_L2),
         ("SQ8", faiss.METRIC_L2), ("SQ4", faiss.METRIC_INNER_PRODUCT),
         ("SQbf16", faiss.METRIC_L2), ("PQ14", faiss.METRIC_L2), ("IDMap,SQ8", faiss.METRIC_L2),
         ("IVF32,PQ7x4", faiss.METRIC_L2), ("PQ14x4", faiss.METRIC_L2),
         ("PCA32,Flat", faiss.METRIC_L2), ("PCAW32,IVF32,Flat", faiss.METRIC_L2),
         ("PCAR32,IVF32,SQ8", faiss.METRIC_INNER_PRODUCT), ("IDMap,PCA32,Flat", faiss.METRIC_L2),
         ("RR196,IVF32,Flat", faiss.METRIC_L2), ("PCA64,RR64,Flat", faiss.METRIC_L2),
         ("OPQ8_32,IVF32,PQ8", faiss.METRIC_L2)]
# FAISS stores an OPQ rotation as a plain LinearTransform (so does its file): jann names it so.
DESCRIBED_AS = {"OPQ8_32,IVF32,PQ8": "LinearTransform32,IVF32,PQ8"}
# Look-up-table sums in another order round differently: on inner products of this data
# (values ~1e5) that reorders near ties, 0.4% of ids measured; L2 ids are identical.
ID_AGREEMENT = {("IVF32,PQ14", faiss.METRIC_INNER_PRODUCT): 0.99}


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("spec,metric", CASES, ids=[f"{s}-{m}" for s, m in CASES])
def test_faiss_files_search_as_faiss(spec, metric, data, tmp_path):
    xb, xq = data
    ref = _faiss_index(spec, metric, xb)
    params = {}
    if "IVF" in spec:
        faiss.extract_index_ivf(ref).nprobe = params["nprobe"] = 4
    path = tmp_path / "index.faiss"
    faiss.write_index(ref, str(path))
    index = jann.read_faiss(path)
    assert jann.ntotal(index) == ref.ntotal
    assert index.describe() == DESCRIBED_AS.get(spec, spec)
    want_d, want_i = ref.search(xq, K)
    got_d, got_i = jann.search(index, xq, K, **params)
    agreement = ID_AGREEMENT.get((spec, metric))
    if agreement is None:
        np.testing.assert_array_equal(np.asarray(got_i), want_i)
    else:
        assert (np.asarray(got_i) == want_i).mean() >= agreement
    np.testing.assert_allclose(np.asarray(got_d), want_d, rtol=1e-4, atol=1e-3)


@pytest.mark.filterwarnings("ignore")
def test_a_read_pre_transform_reconstructs_saves_and_runs_in_jit(data, tmp_path):
    xb, xq = data
    ref = _faiss_index("PCA32,IVF8,Flat", faiss.METRIC_L2, xb[:1000])
    faiss.extract_index_ivf(ref).nprobe = 3
    index = jann.read_faiss(faiss.serialize_index(ref))
    # FAISS's reverse transform (the transpose of PCA's orthonormal rows)
    np.testing.assert_allclose(np.asarray(jann.reconstruct(index, np.arange(5))),
                               ref.reconstruct_n(0, 5), rtol=1e-4, atol=1e-3)
    jann.save(index, tmp_path / "ckpt")
    search = jax.jit(lambda ix, q: jann.search(ix, q, K, nprobe=3))
    np.testing.assert_array_equal(np.asarray(search(jann.load(tmp_path / "ckpt"), xq)[1]),
                                  ref.search(xq, K)[1])
    # a truncated transform, or one whose sizes do not chain, is refused by name
    blob = faiss.serialize_index(ref).tobytes()
    for cut in (45, 60, 300, 8000):
        with pytest.raises(jann.FileFormatError):
            jann.read_faiss(blob[:cut])
    d_out_at = blob.index(b"IwFl") - 9  # the transform's d_out, before is_trained
    with pytest.raises(jann.FileFormatError, match="chain|disagree"):
        jann.read_faiss(blob[:d_out_at] + (31).to_bytes(4, "little") + blob[d_out_at + 4:])
    normalized = faiss.serialize_index(_faiss_index("L2norm,Flat", faiss.METRIC_L2,
                                                    xb[:50])).tobytes()
    assert jann.read_faiss(normalized).describe() == "L2norm,Flat"
    at = normalized.index(b"VNrm") + 4  # the norm: only 2 (L2) is read
    with pytest.raises(jann.FileFormatError, match="norm 1.0"):
        jann.read_faiss(normalized[:at] + np.float32(1.0).tobytes() + normalized[at + 4:])
    with pytest.raises(jann.FileFormatError, match="VXyz"):  # a transform jann does not know
        jann.read_faiss(normalized.replace(b"VNrm", b"VXyz"))


@pytest.mark.filterwarnings("ignore")
def test_an_ivf_with_removals_keeps_its_ids(data):
    xb, xq = data
    ref = _faiss_index("IVF32,Flat", faiss.METRIC_L2, xb, remove=np.arange(0, 3000, 3))
    faiss.extract_index_ivf(ref).nprobe = 8
    index = jann.read_faiss(faiss.serialize_index(ref))
    assert index.describe() == "IDMap,IVF32,Flat"  # the gaps need an id map
    np.testing.assert_array_equal(np.asarray(jann.search(index, xq, K, nprobe=8)[1]),
                                  ref.search(xq, K)[1])


@pytest.mark.filterwarnings("ignore")
def test_truncated_tampered_and_unsupported_files_fail_cleanly(data):
    xb, _ = data
    blob = faiss.serialize_index(_faiss_index("IVF8,Flat", faiss.METRIC_L2, xb[:500])).tobytes()
    for cut in (0, 3, 20, 60, 200, len(blob) // 2, len(blob) - 1):
        with pytest.raises(jann.FileFormatError):
            jann.read_faiss(blob[:cut])
    with pytest.raises(jann.FileFormatError, match="past its index"):
        jann.read_faiss(blob + b"\0")
    # a vector length field set to 2**60: refused before any allocation
    flat = faiss.serialize_index(_faiss_index("Flat", faiss.METRIC_L2, xb[:10])).tobytes()
    length_at = 4 + 4 + 8 * 3 + 1 + 4
    tampered = flat[:length_at] + (2**60).to_bytes(8, "little") + flat[length_at + 8:]
    with pytest.raises(jann.FileFormatError, match="longer than the file"):
        jann.read_faiss(tampered)
    hnsw = faiss.serialize_index(_faiss_index("HNSW8,SQ8", faiss.METRIC_L2, xb[:500]))
    with pytest.raises(jann.FileFormatError, match="not read"):
        jann.read_faiss(hnsw)
    pq6 = faiss.serialize_index(_faiss_index("IVF8,PQ4x6", faiss.METRIC_L2, xb[:500]))
    with pytest.raises(jann.FileFormatError, match="4-bit"):
        jann.read_faiss(pq6)
    with pytest.raises(jann.FileFormatError, match="path or bytes"):
        jann.read_faiss(12)


WRITTEN = [("Flat", "l2"), ("Flat", "ip"), ("IDMap,Flat", "l2"), ("IDMap2,Flat", "ip"),
           ("IVF32,Flat", "l2"), ("IVF32,Flat", "ip"), ("IDMap,IVF32,Flat", "l2"),
           ("IVF32,PQ14", "l2"), ("IVF32,PQ14", "ip"), ("IVF32,PQ7", "l2"),
           ("IVF32,SQ8", "l2"), ("IVF32,SQ6", "ip"), ("IVF32,SQbf16", "l2"), ("SQ8", "l2"),
           ("SQ4", "ip"), ("SQfp16", "l2"), ("PQ14", "l2"), ("IDMap2,PQ7", "ip"),
           ("IVF32,PQ7x4", "l2"), ("PQ14x4", "l2"), ("PCA32,Flat", "l2"),
           ("PCAR32,IVF32,SQ8", "ip"), ("OPQ8_32,IVF32,PQ8", "l2"), ("RR64,IVF32,Flat", "l2"),
           ("IDMap,PCAW32,Flat", "l2")]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("spec,metric", WRITTEN, ids=[f"{s}-{m}" for s, m in WRITTEN])
def test_written_files_search_in_faiss_as_in_jann(spec, metric, data, tmp_path):
    xb, xq = data
    index = jann.index_factory(xb.shape[1], spec, metric)
    index = jann.train(index, xb, key=0)
    ids = np.arange(len(xb)) * 5 + 3 if spec.startswith("IDMap") else None
    index = jann.add(index, xb, ids)
    index, _ = jann.remove_ids(index, np.arange(0, len(xb) * 5, 35))  # gaps in the ids
    params = {"nprobe": 4} if "IVF" in spec else {}
    want_d, want_i = (np.asarray(a) for a in jann.search(index, xq, K, **params))
    path = tmp_path / "index.faiss"
    assert jann.write_faiss(index, path) is None
    ref = faiss.read_index(str(path))
    assert ref.ntotal == jann.ntotal(index) and ref.d == index.d
    if params:
        faiss.extract_index_ivf(ref).nprobe = 4
    got_d, got_i = ref.search(xq, K)
    if "PQ" in spec and metric == "ip":  # near ties reorder (see ID_AGREEMENT)
        same = np.mean([len(set(a) & set(b)) / K for a, b in zip(got_i, want_i)])
        assert same >= 0.99, same
        np.testing.assert_allclose(got_d, want_d, rtol=1e-4, atol=1e-3)
    else:  # the same ids wherever the distance is not tied (PQ7 ties exactly)
        assert_knn_equal(got_d, got_i, want_d, want_i, rtol=1e-4, atol=1e-3)
    # faiss writes the index it read back to the same bytes (nprobe 1 as jann writes it)
    if params:
        faiss.extract_index_ivf(ref).nprobe = 1
    blob = jann.write_faiss(index)
    assert faiss.serialize_index(ref).tobytes() == blob == path.read_bytes()
    again = jann.read_faiss(blob)  # and jann reads its own file back
    np.testing.assert_array_equal(np.asarray(jann.search(again, xq, K, **params)[1]), want_i)


@pytest.mark.filterwarnings("ignore")
def test_indexes_faiss_has_no_class_for_are_refused(data):
    xb, _ = data
    d = xb.shape[1]
    with pytest.raises(jann.NotTrainedError):
        jann.write_faiss(jann.index_factory(d, "IVF8,Flat"))
    for spec, metric, why in (("Flat", "cosine", "cosine"), ("IVF8,RQ2x4", "l2", "Residual"),
                              ("IVF8,PQ14x6", "l2", "4-bit"),
                              ("Residual8,PQ14", "l2", "Index2Layer"),
                              ("HNSW8,SQ8", "l2", "float vectors"), ("ITQ64,Flat", "l2", "linear")):
        index = jann.train(jann.index_factory(d, spec, metric), xb[:1000], key=0)
        with pytest.raises(jann.InvalidInputError, match=why):
            jann.write_faiss(index)
    hashed = jann.add(jann.index_factory(64, "BHash8"), np.zeros((3, 8), np.uint8))
    with pytest.raises(jann.InvalidInputError, match="IndexBinaryHash"):
        jann.write_faiss(hashed)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("spec", ["IVF32,PQ14,RFlat", "SQ4,RFlat"])
def test_refine_flat_both_ways(spec, data):
    """IndexRefineFlat: faiss-cpu's file read by jann and jann's read by faiss-cpu give
    the same ids at the same nprobe and k_factor; faiss rewrites jann's bytes as they are."""
    xb, xq = data
    params = {"k_factor": 4, **({"nprobe": 4} if "IVF" in spec else {})}

    def set_params(index, k_factor, nprobe):
        index.k_factor = k_factor
        if "IVF" in spec:
            faiss.extract_index_ivf(index).nprobe = nprobe

    ref = faiss.index_factory(xb.shape[1], spec)
    if "PQ" in spec:  # polysemous training only renumbers codes (see _faiss_index)
        faiss.downcast_index(faiss.extract_index_ivf(ref)).do_polysemous_training = False
    ref.train(xb)
    ref.add(xb)
    set_params(ref, 4, 4)
    ours = jann.read_faiss(faiss.serialize_index(ref))
    assert ours.describe() == spec and ours.k_factor == 4
    np.testing.assert_array_equal(np.asarray(jann.search(ours, xq, K, **params)[1]),
                                  ref.search(xq, K)[1])
    index = jann.add(jann.train(jann.index_factory(xb.shape[1], spec), xb, key=0), xb)
    blob = jann.write_faiss(index)
    theirs = faiss.deserialize_index(np.frombuffer(blob, np.uint8))
    set_params(theirs, 4, 4)
    np.testing.assert_array_equal(theirs.search(xq, K)[1],
                                  np.asarray(jann.search(index, xq, K, **params)[1]))
    set_params(theirs, 1, 1)
    assert faiss.serialize_index(theirs).tobytes() == blob
    removed, _ = jann.remove_ids(index, [5])  # FAISS's refine numbers rows 0..n-1
    with pytest.raises(jann.InvalidInputError, match="0..n-1"):
        jann.write_faiss(removed)


@pytest.fixture(scope="module")
def binary_data(data):
    """Sign bits of the embedded data's first 192 centred features (real codes)."""
    xb, xq = (x[:, :192] for x in data)
    mean = xb.mean(0)
    return (np.asarray(jann.transforms.binary_codes(xb - mean)),
            np.asarray(jann.transforms.binary_codes(xq - mean)))


BINARY = ["BFlat", "BIVF16", "IDMap,BFlat", "IDMap2,BIVF16"]


def _assert_same_hamming_results(got_d, got_i, want_d, want_i, xq, codes_of):
    """Equal distances; the same ids below each row's k-th distance; at it, ties cut by
    k may differ (FAISS's IVF keeps the first met), so those ids' true distances are
    checked instead."""
    got_d, got_i = np.asarray(got_d), np.asarray(got_i)
    np.testing.assert_array_equal(got_d, want_d)
    for q, (d, i, wi) in enumerate(zip(got_d, got_i, want_i)):
        below = d < d[-1]
        assert set(i[below]) == set(wi[below]), q
        true = np.unpackbits(codes_of(i) ^ xq[q], axis=1).sum(1)
        np.testing.assert_array_equal(true, d)


@pytest.mark.parametrize("spec", BINARY)
def test_binary_indexes_both_ways(spec, binary_data):
    """IndexBinaryFlat / IVF (and their IDMaps): faiss-cpu's file searched by jann as by
    faiss, jann's read by faiss-cpu (written back to the same bytes) and by jann."""
    xb, xq = binary_data
    d = 8 * xb.shape[1]
    ref = faiss.index_binary_factory(d, spec)
    ref.train(xb)
    ids = np.arange(len(xb)) * 3 + 1 if spec.startswith("IDMap") else None
    ref.add(xb) if ids is None else ref.add_with_ids(xb, ids)
    ivf = faiss.downcast_IndexBinary(ref.index) if hasattr(ref, "index") else ref
    params = {"nprobe": 4} if "IVF" in spec else {}
    if params:
        ivf.nprobe = 4
    index = jann.read_faiss(faiss.serialize_index_binary(ref))
    assert index.describe() == spec and jann.ntotal(index) == len(xb)
    want_d, want_i = ref.search(xq, K)
    got_d, got_i = jann.search(index, xq, K, **params)

    def codes_of(i):
        return xb[(i - 1) // 3 if ids is not None else i]

    _assert_same_hamming_results(got_d, got_i, want_d, want_i, xq, codes_of)

    built = jann.train(jann.index_factory(d, spec), xb, key=0)
    built, _ = jann.remove_ids(jann.add(built, xb, ids), np.arange(0, 3 * len(xb), 35))
    want_d, want_i = (np.asarray(a) for a in jann.search(built, xq, K, **params))
    blob = jann.write_faiss(built)
    back = faiss.deserialize_index_binary(np.frombuffer(blob, np.uint8))
    ivf = faiss.downcast_IndexBinary(back.index) if hasattr(back, "index") else back
    if params:
        ivf.nprobe = 4
    got_d, got_i = back.search(xq, K)
    _assert_same_hamming_results(got_d, got_i, want_d, want_i, xq,
                                 lambda i: np.asarray(jann.reconstruct(built, i)))
    if params:
        ivf.nprobe = 1
    assert faiss.serialize_index_binary(back).tobytes() == blob
    again = jann.read_faiss(blob)
    np.testing.assert_array_equal(np.asarray(jann.search(again, xq, K, **params)[1]), want_i)
    for cut in (0, 10, 40, len(blob) // 2, len(blob) - 1):
        with pytest.raises(jann.FileFormatError):
            jann.read_faiss(blob[:cut])


def _recall(found, truth):
    return np.mean([len(set(a) & set(b)) / K for a, b in zip(found, truth)])


@pytest.mark.parametrize("spec,metric", [("HNSW8", faiss.METRIC_L2),
                                         ("HNSW16", faiss.METRIC_INNER_PRODUCT),
                                         ("IDMap,HNSW8", faiss.METRIC_L2)])
def test_hnsw_files_both_ways(spec, metric, data):
    """IndexHNSWFlat: faiss-cpu's graph read by jann finds the true neighbours at least as
    often as faiss at the same efSearch (less 0.01); jann's graph written is read by
    faiss-cpu (and written back to the same bytes) and by jann (same results)."""
    xb, xq = data
    name = "l2" if metric == faiss.METRIC_L2 else "ip"
    scores = -((xq[:, None, :] - xb[None]) ** 2).sum(-1) if name == "l2" else xq @ xb.T
    truth = np.argsort(-scores, 1)[:, :K]
    ref = faiss.index_factory(xb.shape[1], spec, metric)
    ids = np.arange(len(xb)) * 7 + 1 if spec.startswith("IDMap") else np.arange(len(xb))
    ref.add(xb) if not spec.startswith("IDMap") else ref.add_with_ids(xb, ids)
    graph = faiss.downcast_index(ref.index) if spec.startswith("IDMap") else ref
    index = jann.read_faiss(faiss.serialize_index(ref))
    assert index.describe() == spec and jann.ntotal(index) == len(xb)
    for ef in (16, 64):
        graph.hnsw.efSearch = ef
        theirs = _recall(ref.search(xq, K)[1], ids[truth])
        ours = _recall(np.asarray(jann.search(index, xq, K, ef=ef)[1]), ids[truth])
        assert ours >= theirs - 0.01, (ef, ours, theirs)

    built = jann.add(jann.index_factory(xb.shape[1], spec, name), xb,
                     ids if spec.startswith("IDMap") else None)
    want = np.asarray(jann.search(built, xq, K, ef=64)[1])
    blob = jann.write_faiss(built)
    back = faiss.deserialize_index(np.frombuffer(blob, np.uint8))
    assert faiss.serialize_index(back).tobytes() == blob
    np.testing.assert_array_equal(np.asarray(jann.search(jann.read_faiss(blob), xq, K,
                                                         ef=64)[1]), want)
    # faiss-cpu at the same efSearch finds what jann finds (L2); on inner products its one
    # descent path needs a wider efSearch (measured: 0.95-0.97 at 16-64 where jann has
    # 0.98-0.995, 1.0 at 256), yet finds more on jann's graph than on the one it builds
    # itself (0.885-0.89 at 16-64 on these rows)
    back_graph = faiss.downcast_index(back.index) if hasattr(back, "index") else back
    back_graph.hnsw.efSearch = 64 if name == "l2" else 256
    assert _recall(back.search(xq, K)[1], ids[truth]) >= _recall(want, ids[truth]) - 0.01
    for ef in (16, 64):
        graph.hnsw.efSearch = back_graph.hnsw.efSearch = ef
        assert _recall(back.search(xq, K)[1], ids[truth]) >= \
            _recall(ref.search(xq, K)[1], ids[truth]) - 0.01, ef
    if spec == "HNSW8":
        removed, _ = jann.remove_ids(built, [3])
        with pytest.raises(jann.InvalidInputError, match="compact"):
            jann.write_faiss(removed)
