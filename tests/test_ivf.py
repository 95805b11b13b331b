"""IVF family and coded indexes: exactness limits, updates, persistence, and bad input
(recall parity with faiss-cpu: test_ivf_parity.py)."""

import dataclasses
import hashlib
import json

import jax
import numpy as np
import pytest

import jann
from jann.ops.knn import map_query_blocks
from jann import datasets


K = 10
NQ = 300


@pytest.fixture(scope="module")
def data():
    d = datasets.load_embedded()
    xb, xq = d["base"], d["queries"][:NQ]
    _, gt = datasets.exact_knn(xq, xb, K)
    return xb, xq, gt


def recall(I, gt):
    I = np.asarray(I)
    return float(np.mean([len(set(a[:K]) & set(b[:K])) / K for a, b in zip(I, gt)]))


def _ivf_flat(xb, nlist=64, description=None, metric="l2", **kw):
    index = jann.index_factory(xb.shape[1], description or f"IVF{nlist},Flat", metric, **kw)
    return jann.train(index, xb, key=jax.random.key(0))


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_nprobe_nlist_equals_exact_search(metric, data):
    xb, xq, _ = data
    index = jann.add(_ivf_flat(xb, 32, metric=metric), xb)
    D, I = jann.search(index, xq[:50], K, nprobe=32)
    flat = jann.add(jann.index_factory(xb.shape[1], "Flat", metric), xb)
    fD, fI = jann.search(flat, xq[:50], K)
    np.testing.assert_allclose(np.asarray(D), np.asarray(fD), rtol=1e-4, atol=1e-1)
    assert (np.asarray(I) == np.asarray(fI)).mean() > 0.99


def test_recall_grows_with_nprobe_and_no_recompile_within_bucket(data, compile_counter):
    xb, xq, gt = data
    index = jann.add(_ivf_flat(xb), xb)
    recalls = [recall(jann.search(index, xq, K, nprobe=p)[1], gt) for p in (1, 4, 16, 64)]
    assert recalls == sorted(recalls) and recalls[-1] > 0.999
    jann.search(index, xq, K, nprobe=5)
    before = compile_counter.count
    for p in (6, 7, 8):  # the same power-of-two bucket as 5
        jann.search(index, xq, K, nprobe=p)
    assert compile_counter.count == before


def test_padded_query_rows_are_skipped_and_change_nothing(data):
    """IVF takes a batch's tail as one padded bucket whose padded rows probe no list;
    every row's result must not depend on how the batch was cut."""
    from jann.batching import bucketed_chunks
    xb, xq, _ = data
    assert [c[2] for c in bucketed_chunks(10000, padding_is_free=True)] == [16384]
    assert [c[2] for c in bucketed_chunks(20000, padding_is_free=True)] == [16384, 4096]
    assert len(bucketed_chunks(10000)) > 3  # exact search avoids padding instead
    index = jann.add(_ivf_flat(xb, 32), xb)
    assert index.skips_padded_queries
    D, I = jann.search(index, xq, K, nprobe=4)                  # 300 rows -> one 1024 bucket
    for rows in (slice(0, 1), slice(7, 70), slice(250, 300)):  # other buckets and paddings
        d, i = jann.search(index, xq[rows], K, nprobe=4)
        np.testing.assert_array_equal(np.asarray(i), np.asarray(I)[rows])
        np.testing.assert_allclose(np.asarray(d), np.asarray(D)[rows], rtol=1e-5)


def test_refine_of_a_padded_batch_equals_unpadded(data):
    """A refined IVF index skips padded query rows in the base scan, the probe and the
    rescoring: results per row do not depend on the batch cut."""
    xb, xq, _ = data
    index = jann.add(jann.train(jann.index_factory(196, "IVF32,PQ14,RFlat"), xb[:4000],
                                key=jax.random.key(0)), xb[:4000])
    D, I = jann.search(index, xq, K, nprobe=4, k_factor=3)    # 300 rows -> one 1024 bucket
    assert (np.asarray(I) >= 0).all()
    for rows in (slice(0, 1), slice(7, 70), slice(250, 300)):
        d, i = jann.search(index, xq[rows], K, nprobe=4, k_factor=3)
        np.testing.assert_array_equal(np.asarray(i), np.asarray(I)[rows])
        np.testing.assert_allclose(np.asarray(d), np.asarray(D)[rows], rtol=1e-5)


def test_graph_coarse_quantizer(data, tmp_path):
    """IVF<nlist>_HNSW<M>: a graph index over the centroids assigns and probes lists. On
    64 centroids a beam of quantizer_ef=64 sees them all, so the lists (and results) are
    the Flat quantizer's; a narrow beam still finds most neighbours."""
    xb, xq, gt = data
    key = jax.random.key(0)
    by_flat = jann.train(jann.index_factory(196, "IVF64,Flat"), xb[:4000], key=key)
    by_graph = jann.train(jann.index_factory(196, "IVF64_HNSW8,Flat"), xb[:4000], key=key)
    assert isinstance(by_graph.quantizer, jann.GraphIndex)
    assert by_graph.describe() == "IVF64_HNSW8,Flat"
    np.testing.assert_array_equal(np.asarray(by_graph.centroids), np.asarray(by_flat.centroids))
    by_flat, by_graph = jann.add(by_flat, xb), jann.add(by_graph, xb)
    want = jann.search(by_flat, xq, K, nprobe=8)
    got = jann.search(by_graph, xq, K, nprobe=8, quantizer_ef=64)
    np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))
    _, narrow = jann.search(by_graph, xq, K, nprobe=8, quantizer_ef=8)
    assert recall(narrow, gt) > 0.9
    jann.save(by_graph, tmp_path / "g")
    loaded = jann.load(tmp_path / "g")
    np.testing.assert_array_equal(
        np.asarray(jann.search(loaded, xq, K, nprobe=8, quantizer_ef=64)[1]),
        np.asarray(got[1]))
    with pytest.raises(jann.InvalidInputError, match="quantizer_ef"):
        jann.search(by_flat, xq, K, nprobe=8, quantizer_ef=8)
    with pytest.raises(jann.InvalidInputError, match="quantizer_ef must be"):
        jann.search(by_graph, xq, K, nprobe=8, quantizer_ef=0)
    with pytest.raises(jann.FactoryStringError, match="coarse quantizer"):
        jann.index_factory(196, "IVF64_PQ4,Flat")


def test_scan_in_query_blocks_when_slots_pass_the_bound(data, monkeypatch):
    """A search whose (queries x nprobe) candidate slots pass MAX_SCAN_BYTES scans its
    queries in blocks; every row's result is the same as from one scan."""
    from jann.ivf import list_major
    xb, xq, _ = data
    index = jann.add(_ivf_flat(xb, 32), xb)
    D, I = jann.search(index, xq, K, nprobe=4)
    per_query = list_major.scan_shape(index, len(xq), 4, K)["bytes_per_query"]
    monkeypatch.setattr(list_major, "MAX_SCAN_BYTES", 64 * per_query)
    blocked = []
    monkeypatch.setattr(list_major, "map_query_blocks",
                        lambda *a: blocked.append(a[2]) or map_query_blocks(*a))
    jax.clear_caches()
    d, i = jann.search(index, xq, K, nprobe=4)
    assert blocked == [64] and len(xq) > 64
    np.testing.assert_array_equal(np.asarray(i), np.asarray(I))
    np.testing.assert_allclose(np.asarray(d), np.asarray(D), rtol=1e-5)


def test_any_k_and_empty_lists(data):
    xb, xq, _ = data
    index = jann.add(_ivf_flat(xb), xb[:500])
    D, I = jann.search(index, xq[:5], 700, nprobe=64)
    assert (np.asarray(I)[:, 500:] == -1).all() and (np.asarray(I)[:, :500] >= 0).all()
    D, I = jann.search(jann.train(jann.index_factory(196, "IVF8,Flat"), xb[:400],
                                  key=jax.random.key(1)), xq[:2], 3, nprobe=2)
    assert (np.asarray(I) == -1).all()  # trained but empty


def test_add_in_batches_equals_one_add(data):
    xb, xq, _ = data
    trained = _ivf_flat(xb, description="IVF64,SQ8")
    one = jann.add(trained, xb[:6000])
    many = trained
    for part in np.array_split(xb[:6000], 5):
        many = jann.add(many, part)
    for a, b in zip(jann.search(one, xq, K, nprobe=8), jann.search(many, xq, K, nprobe=8)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("description", ["IVF64,Flat", "IVF64,PQ14", "PCA64,IVF32,Flat",
                                         "IVF32,Flat,RFlat"])
def test_remove_then_search_never_returns_removed(description, data):
    xb, xq, _ = data
    index = jann.add(jann.train(jann.index_factory(196, description), xb[:5000],
                                key=jax.random.key(0)), xb[:5000])
    params = {} if description.startswith("IVF32,Flat,R") else {"nprobe": 16}
    _, before = jann.search(index, xq[:100], K, **params)
    victims = np.unique(np.asarray(before)[:, :3])
    new, n = jann.remove_ids(index, jann.IDSelectorBatch(victims))
    assert n == len(victims) and jann.ntotal(new) == 5000 - n
    _, after = jann.search(new, xq[:100], K, **params)
    assert not np.isin(np.asarray(after), victims).any()


@pytest.mark.parametrize("description", ["IVF16,Flat", "IVF16,Flat,RFlat", "PCA64,IVF16,Flat"])
def test_sequential_ids_are_never_given_twice(description, data, tmp_path):
    """FAISS's IVF numbers new vectors from ntotal, so after a removal an add can give a
    live id again; jann goes on after the largest id it ever gave, through a save and a
    merge, and a checkpoint written before that counter existed continues likewise."""
    xb, _, _ = data
    index = jann.add(jann.train(jann.index_factory(196, description), xb[:2000], key=0),
                     xb[:100])
    index, n = jann.remove_ids(index, [3, 99])  # 99: the last id given
    assert n == 2
    index = jann.add(index, xb[100:102])
    _, nearest = jann.search(index, xb[[1, 100, 101]], 1, nprobe=16)
    assert np.asarray(nearest)[:, 0].tolist() == [1, 100, 101]
    with pytest.raises(jann.IdNotFoundError):
        jann.reconstruct(index, [99])
    jann.save(index, tmp_path / "ix")
    restored = jann.add(jann.load(tmp_path / "ix"), xb[102:103])
    assert np.asarray(jann.search(restored, xb[102:103], 1, nprobe=16)[1])[0, 0] == 102
    if description == "IVF16,Flat":  # merge_from takes plain IVF indexes
        merged = jann.merge_from(index, index)  # the copy's ids shifted past every id given
        _, ids = jann.search(merged, xb[[100]], 2, nprobe=16)
        assert sorted(np.asarray(ids)[0].tolist()) == [100, 202]
    # A checkpoint from before the counter: numbering goes on after its largest id.
    config_path = next((tmp_path / "ix").glob("v*/config.json"))
    config = json.loads(config_path.read_text())
    ivf = config["index"]
    while ivf["type"] != "IVFIndex":
        ivf = next(f for f in ivf["fields"].values() if isinstance(f, dict) and "type" in f)
    name = ivf["fields"].pop("n_added")["array"]
    config["arrays"].pop(name)
    config.pop("sha256")  # re-sealed as jann seals it (older checkpoints had no seal)
    config["sha256"] = hashlib.sha256(json.dumps(
        config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    config_path.write_text(json.dumps(config))
    old = jann.add(jann.load(tmp_path / "ix"), xb[102:103])
    assert np.asarray(jann.search(old, xb[102:103], 1, nprobe=16)[1])[0, 0] == 102


def test_ids_selectors_and_reconstruct(data):
    xb, xq, _ = data
    index = jann.add(_ivf_flat(xb, description="IDMap2,IVF64,Flat"), xb[:3000],
                     ids=np.arange(3000) * 7 + 1)
    _, I = jann.search(index, xq[:20], K, nprobe=64, selector=jann.IDSelectorRange(0, 7000))
    assert ((np.asarray(I) < 7000) & (np.asarray(I) >= 0)).all()  # full k among allowed
    np.testing.assert_allclose(np.asarray(jann.reconstruct(index, [8, 7 * 2999 + 1])),
                               xb[[1, 2999]])
    with pytest.raises(jann.DuplicateIdError):
        jann.add(index, xb[:2], ids=[1, 5])


def test_reconstruct_of_codes_is_close(data):
    xb, _, _ = data
    index = jann.add(_ivf_flat(xb, description="IVF64,SQ8"), xb[:1000])
    rec = np.asarray(jann.reconstruct_n(index, 0, 1000))
    assert np.mean((rec - xb[:1000]) ** 2) < 0.01 * np.mean(xb[:1000] ** 2)


def test_range_search_ivf_flat_full_probe_equals_brute_force(data):
    xb, xq, _ = data
    index = jann.add(_ivf_flat(xb, 16), xb[:4000])
    flat = jann.add(jann.index_factory(196, "Flat"), xb[:4000])
    radius = 3.0e5
    lims, D, I = jann.range_search(index, xq[:20], radius, nprobe=16)
    flims, fD, fI = jann.range_search(flat, xq[:20], radius)
    np.testing.assert_array_equal(np.asarray(lims), np.asarray(flims))
    for q in range(20):
        a = np.asarray(I)[np.asarray(lims)[q]:np.asarray(lims)[q + 1]]
        b = np.asarray(fI)[np.asarray(flims)[q]:np.asarray(flims)[q + 1]]
        assert sorted(a) == sorted(b)


def _same(a, b):
    """Same ids; distances equal up to float32 rounding (programs compiled differently
    may fuse the code decoding differently)."""
    np.testing.assert_allclose(np.asarray(a[0]), np.asarray(b[0]), rtol=1e-6)
    assert (np.asarray(a[1]) == np.asarray(b[1])).mean() > 0.995


def test_preassigned_and_merge(data):
    xb, xq, _ = data
    trained = _ivf_flat(xb, description="IVF64,PQ14")
    lists = np.asarray(trained.assign(trained.prepare(xb[:2000])))
    pre = jann.add_preassigned(trained, xb[:2000], lists)
    normal = jann.add(trained, xb[:2000])
    _same(jann.search(pre, xq, K, nprobe=8), jann.search(normal, xq, K, nprobe=8))
    probe = np.asarray(trained.assign(trained.prepare(xq), 8))
    D, I = jann.search_preassigned(normal, xq, K, probe)
    np.testing.assert_array_equal(np.asarray(I), np.asarray(jann.search(normal, xq, K, nprobe=8)[1]))
    merged = jann.merge_from(jann.add(trained, xb[:1000]), jann.add(trained, xb[1000:2000]))
    _same(jann.search(merged, xq, K, nprobe=8), jann.search(normal, xq, K, nprobe=8))
    other = _ivf_flat(xb[::-1].copy(), description="IVF64,PQ14")
    with pytest.raises(jann.InvalidInputError, match="quantizer"):
        jann.merge_from(normal, jann.add(other, xb[:10]))


@pytest.mark.parametrize("description", ["IVF64,PQ14", "OPQ14_112,IVF64,PQ14", "SQ8",
                                         "IVF32,Flat,RFlat"])
def test_save_load_and_serialize_keep_results(description, data, tmp_path):
    xb, xq, _ = data
    index = jann.index_factory(196, description)
    if description.startswith("OPQ"):  # a few rotation rounds: what is saved is under test
        index = dataclasses.replace(index, transform=index.transform.train(
            xb[:3000], key=jax.random.key(1), niter=2))
    index = jann.add(jann.train(index, xb[:3000], key=jax.random.key(0)), xb[:3000])
    params = {"nprobe": 8} if description.startswith(("IVF64", "OPQ")) else {}
    want = jann.search(index, xq, K, **params)
    jann.save(index, tmp_path / "ix")
    for restored in (jann.load(tmp_path / "ix"), jann.deserialize(jann.serialize(index))):
        assert restored.describe() == index.describe()
        for a, b in zip(want, jann.search(restored, xq, K, **params)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_shrink_to_fit_and_memory(data):
    xb, _, _ = data
    index = jann.shrink_to_fit(jann.add(_ivf_flat(xb, description="IVF64,PQ28"), xb))
    codes_and_ids = jann.ntotal(index) * (28 + index.ids.dtype.itemsize)
    stored = index.payload.nbytes + index.ids.nbytes + index.norms.nbytes + index.offsets.nbytes
    assert stored <= 1.3 * codes_and_ids


def test_search_inside_jit(data):
    xb, xq, gt = data
    index = jann.add(_ivf_flat(xb), xb)
    D, I = jax.jit(lambda ix, q: jann.search(ix, q, K, nprobe=8))(index, xq)
    np.testing.assert_array_equal(np.asarray(I), np.asarray(jann.search(index, xq, K, nprobe=8)[1]))


# ------------------------------------------------------------------ bad input
def test_untrained_errors_name_train(data):
    xb, xq, _ = data
    index = jann.index_factory(196, "IVF64,PQ14")
    with pytest.raises(jann.NotTrainedError, match="jann.train"):
        jann.add(index, xb[:10])
    with pytest.raises(jann.NotTrainedError, match="jann.train"):
        jann.search(index, xq[:1], 1)


def test_bad_ivf_parameters(data):
    xb, xq, _ = data
    with pytest.raises(jann.InvalidInputError, match="at least"):
        jann.train(jann.index_factory(196, "IVF64,Flat"), xb[:10], key=jax.random.key(0))
    index = jann.add(_ivf_flat(xb, 16), xb[:100])
    for bad in (0, -1, 17, 2.5):
        with pytest.raises(jann.InvalidInputError, match="nprobe"):
            jann.search(index, xq[:1], 1, nprobe=bad)
    with pytest.raises(jann.InvalidInputError, match="divide|multiple"):
        jann.index_factory(196, "IVF16,PQ15")
    for nbits in (0, 17):
        with pytest.raises(jann.JannError):
            jann.index_factory(196, f"IVF16,PQ14x{nbits}")
    with pytest.raises(jann.FactoryStringError, match="Grammar"):
        jann.index_factory(196, "IVF16,Nope")
    with pytest.raises(jann.FactoryStringError, match="Flat only"):
        jann.index_factory(196, "IVF16,Flat", metric="l1")


def test_few_training_points_warn_like_faiss(data):
    xb, _, _ = data
    with pytest.warns(UserWarning, match="training points"):
        jann.train(jann.index_factory(196, "IVF64,Flat"), xb[:1000], key=jax.random.key(0))


@pytest.mark.parametrize("description,metric", [
    ("IVF16,PQ14", "l2"), ("IVF16,PQ14", "ip"), ("IVF16,PQ14x4", "l2"), ("PQ14", "l2")])
def test_table_and_decoding_scans_agree(data, monkeypatch, description, metric):
    """PQ codes are scored by look-up tables for small query groups and decoded for large
    ones: the two give the same neighbours and distances (to float rounding)."""
    from jann.ivf import list_major
    xb, xq, _ = data
    index = jann.index_factory(xb.shape[1], description, metric=metric)
    index = jann.add(jann.train(index, xb[:2000]), xb)
    params = {} if description == "PQ14" else {"nprobe": 4}
    runs = []
    for limit in (0, 1 << 20):
        monkeypatch.setattr(list_major, "MAX_TABLE_QUERY_GROUP", limit)
        jax.clear_caches()
        runs.append([np.asarray(a) for a in jann.search(index, xq[:40], K, **params)])
    (d_decoded, i_decoded), (d_tables, i_tables) = runs
    np.testing.assert_allclose(d_tables, d_decoded, rtol=1e-4, atol=1e-3)
    assert np.mean(i_tables == i_decoded) > 0.98  # only near-ties may swap


@pytest.mark.parametrize("description,metric", [
    ("IVF32,Flat", "l2"), ("IVF32,Flat", "ip"), ("IVF32,Flat", "cosine"), ("IVF32,SQ8", "l2"),
    ("IVF32,SQ8", "ip"), ("IVF32,PQ14", "l2"), ("IVF32,PQ14", "ip"), ("IVF32,PQ14x4", "l2")])
def test_gathered_and_list_major_scans_agree(data, monkeypatch, description, metric):
    """Small batches scan query-major (`scan_gathered`, lists cut into tiles), large ones
    list-major (`scan`): both give the same neighbours and distances, with the blocks,
    chunks and tiles forced small so that queries span several blocks (the running
    top-k), tiles run past list ends, and with a selector."""
    from jann.ivf import gathered
    xb, xq, _ = data
    index = jann.index_factory(xb.shape[1], description, metric=metric)
    index = jann.add(jann.train(index, xb[:3000], key=jax.random.key(0)), xb[:6000])
    q = index.prepare(jax.numpy.asarray(xq[:6]))
    monkeypatch.setattr(gathered, "MIN_GATHER_BLOCK", 16)
    monkeypatch.setattr(gathered, "MAX_GATHER_BLOCK", 64)
    monkeypatch.setattr(gathered, "GATHER_TILE_ROWS", 8)
    monkeypatch.setattr(gathered, "GATHER_CHUNK_BYTES", 4 * xb.shape[1] * 8 * 2)
    selector = jann.IDSelectorRange(1000, 5000)
    for nprobe, selected in ((1, None), (8, None), (8, selector)):
        lists = index.probe(q, nprobe)
        assert gathered.gathered_shape(index, nprobe)["block"] * 8 < nprobe * 6000 / 32
        ref = index.scan(q, lists, 150, selected)
        for n in (1, 6):
            d, i = jax.jit(lambda q, l: gathered.scan_gathered(index, q, l, 150, selected))(q[:n], lists[:n])
            np.testing.assert_allclose(np.asarray(d), np.asarray(ref[0][:n]), rtol=1e-4,
                                       atol=1e-3)
            assert np.mean(np.asarray(i) == np.asarray(ref[1][:n])) > 0.98  # near-ties
            if selected is not None:
                found = np.asarray(i)[np.asarray(i) >= 0]
                assert ((found >= 1000) & (found < 5000)).all()


@pytest.mark.parametrize("metric,nq,query_group", [("l2", 40, 8), ("ip", 40, 8),
                                                    ("l2", 12, 1)])
def test_folded_row_chunks_give_the_exact_top_k(data, monkeypatch, metric, nq,
                                                query_group):
    """The list-major scan keeps a pair's first row chunk whole and folds later chunks
    into k running slots: with row chunks forced to an eighth of a mean list (most
    lists span several chunks, the last one moved back at the end of the storage), it
    gives the brute-force top-k over the probed lists; with items of 8 queries and of
    one (the group of 2 a mean of 2.25 queries per list would get is halved), both
    computing their products rows first."""
    from jann.ivf import list_major
    xb, xq, _ = data
    index = jann.add(_ivf_flat(xb[:3000], 16, metric=metric), xb[:4000])
    q = index.prepare(jax.numpy.asarray(xq[:nq]))
    lists = index.probe(q, 3)
    monkeypatch.setattr(list_major, "MIN_ROW_CHUNK", 8)
    monkeypatch.setattr(list_major, "ROW_CHUNK_FACTOR", 1 / 8)
    shape = list_major.scan_shape(index, nq, 3, K)
    assert (shape["row_chunk"], shape["query_group"]) == (32, query_group)
    offsets, x = np.asarray(index.offsets), np.asarray(index.codec.decode(index.payload))
    ids, qn = np.asarray(index.ids), np.asarray(q, np.float64)
    d, i = jax.jit(lambda q, l: list_major.scan(index, q, l, K))(q, lists)
    for row, probed in enumerate(np.asarray(lists)):
        rows = np.concatenate([np.arange(offsets[p], offsets[p + 1]) for p in probed])
        y = x[rows].astype(np.float64)
        s = ((qn[row] - y) ** 2).sum(1) if metric == "l2" else -(y @ qn[row])
        best = np.argsort(s, kind="stable")[:K]
        want = s[best] if metric == "l2" else -s[best]
        np.testing.assert_allclose(np.asarray(d[row]), want, rtol=1e-4, atol=1e-2)
        assert len(set(np.asarray(i[row])) & set(ids[rows[best]])) >= K - 1  # near-ties


def test_small_batches_take_the_gathered_scan(data, monkeypatch):
    """The plan follows the measured rule: few queries per list (and no PQ look-up
    tables) scan query-major; the results of jann.search are those of the list-major
    scan, for one query, a padded bucket, and tiny indexes (fewer rows than a tile)."""
    from jann.ivf import gathered, list_major
    xb, xq, gt = data
    index = jann.add(_ivf_flat(xb, 64), xb)
    assert gathered.gathers(index, 1, 8) and gathered.gathers(index, 16, 8)
    assert not gathered.gathers(index, 4096, 8)
    pq = jann.train(jann.index_factory(xb.shape[1], "IVF64,PQ14"), xb[:3000])
    assert gathered.gathers(pq, 1, 8) and not gathered.gathers(pq, 16, 8)  # tables: 1 query
    flat_coded = jann.train(jann.index_factory(xb.shape[1], "PQ14"), xb[:3000])
    assert gathered.gathers(flat_coded, 16, 1) and not gathered.gathers(flat_coded, 4096, 1)
    taken = []
    monkeypatch.setattr(gathered, "scan_gathered", lambda index, *a, **kw: taken.append(
        a[0].shape) or list_major.scan(index, *a, **kw))
    jax.clear_caches()
    D, I = jann.search(index, xq[:3], K, nprobe=8)
    assert taken  # the gathered scan was chosen for 3 queries
    monkeypatch.undo()
    jax.clear_caches()
    d, i = jann.search(index, xq[:3], K, nprobe=8)
    np.testing.assert_array_equal(np.asarray(i), np.asarray(I))
    np.testing.assert_allclose(np.asarray(d), np.asarray(D), rtol=1e-4, atol=1e-3)
    tiny = jann.add(_ivf_flat(xb, 4), xb[:10])
    d, i = jann.search(tiny, xq[:2], 12, nprobe=4)
    assert sorted(np.asarray(i)[0][:10]) == list(range(10)) and (np.asarray(i)[:, 10:] == -1).all()


@pytest.mark.parametrize("description,metric", [
    ("SQ8", "l2"), ("PQ14", "l2"), ("SQ8", "ip"), ("PQ14x4", "cosine")])
def test_flat_coded_scans_agree(data, monkeypatch, description, metric):
    """A flat-coded index (one list) scans batches as a tiled brute force (`one_list`:
    each tile decoded once for all queries) and single queries gathered: both give the
    list-major scan's results, with a selector, over several query blocks of a padded
    batch (70 queries padded to 256, blocks of 32)."""
    from jann.ivf import gathered, one_list
    xb, xq, _ = data
    index = jann.index_factory(xb.shape[1], description, metric=metric)
    index = jann.add(jann.train(index, xb[:3000], key=jax.random.key(0)), xb[:5000])
    assert one_list.scans_one_list(index, 16) and not one_list.scans_one_list(index, 1)
    assert not one_list.scans_one_list(_ivf_flat(xb[:3000], 16), 16)
    selector = jann.IDSelectorRange(1000, 4000)
    monkeypatch.setattr(one_list, "QUERY_BLOCK", 32)
    runs = {}
    for name, tiled, gathers in (("tiled", True, False), ("gathered", False, True),
                                 ("list-major", False, False)):
        monkeypatch.setattr(one_list, "scans_one_list", lambda ix, nq, on=tiled: on)
        monkeypatch.setattr(gathered, "gathers", lambda ix, nq, npb, on=gathers: on)
        jax.clear_caches()
        runs[name] = [np.asarray(a) for a in jann.search(index, xq[:70], K, selector=selector)]
    d_ref, i_ref = runs["list-major"]
    assert ((i_ref >= 1000) & (i_ref < 4000)).all()
    for name in ("tiled", "gathered"):
        d, i = runs[name]
        np.testing.assert_allclose(d, d_ref, rtol=1e-4, atol=1e-3, err_msg=name)
        assert np.mean(i == i_ref) > 0.98, name  # only near-ties may swap
