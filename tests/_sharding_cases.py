"""Sharding cases on 8 simulated CPU devices.

Not collected on its own (jax must see XLA_FLAGS=--xla_force_host_platform_device_count=8
before it starts): tests/test_sharding.py runs this file in a pytest subprocess with the
flag set, and fails with its report when any case here fails.
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import jann
from jann import sharding

D = 16


@pytest.fixture(scope="module", autouse=True)
def eight_devices():
    assert len(jax.devices()) == 8, "run through tests/test_sharding.py (sets XLA_FLAGS)"


@pytest.fixture(scope="module")
def mesh():
    return jax.make_mesh((8,), ("x",))  # Explicit axes, jax's default


@pytest.fixture(scope="module")
def auto_mesh():
    return Mesh(np.array(jax.devices()), ("x",))  # Auto axes


@pytest.fixture(scope="module")
def xb():
    return np.random.default_rng(0).standard_normal((1003, D)).astype(np.float32)


@pytest.fixture(scope="module")
def xq():
    return np.random.default_rng(1).standard_normal((37, D)).astype(np.float32)


def same(a, b, exact=True):
    """Same ids; distances bit-equal (exact) or to float32 rounding of other shapes."""
    (da, ia), (db, ib) = a, b
    np.testing.assert_array_equal(np.asarray(ia), np.asarray(ib))
    if exact:
        np.testing.assert_array_equal(np.asarray(da), np.asarray(db))
    else:
        np.testing.assert_allclose(np.asarray(da), np.asarray(db), rtol=1e-5, atol=1e-3)


# ------------------------------------------------------------------------- Flat
@pytest.mark.parametrize("description,metric", [("Flat", "l2"), ("Flat", "ip"),
                                                ("IDMap2,Flat", "l2")])
def test_flat_sharded_and_replicated_equal_unsharded(description, metric, xb, xq, mesh):
    index = jann.index_factory(D, description, metric=metric)
    ids = None if "IDMap" not in description else np.arange(xb.shape[0]) * 7 + 3
    index = jann.add(index, xb, ids=ids)  # 1003 rows: not a multiple of 8
    ref = jann.search(index, xq, 10)
    sharded = jann.shard(index, mesh, axis="x")
    counts = sharded.shard_counts()
    assert counts.sum() == 1003 and counts.max() - counts.min() <= 1
    same(jann.search(sharded, xq, 10), ref)
    same(jann.search(jann.replicate(index, mesh), xq, 10), ref)
    assert jann.ntotal(sharded) == 1003


def test_auto_axes_mesh_and_to_devices(xb, xq, auto_mesh):
    index = jann.add(jann.index_factory(D, "Flat"), xb)
    ref = jann.search(index, xq, 5)
    same(jann.search(jann.shard(index, auto_mesh), xq, 5), ref)
    on_all = jann.to_devices(index, shard=True)
    assert len(on_all.mesh.devices.flat) == 8 and on_all.nshards == 8
    same(jann.search(on_all, xq, 5), ref)
    same(jann.search(jann.to_devices(index, jax.devices()[2:5]), xq, 5), ref)


def test_k_larger_than_a_shard(xb, xq, mesh):
    index = jann.add(jann.index_factory(D, "Flat"), xb[:20])  # 2 or 3 rows per shard
    sharded = jann.shard(index, mesh)
    for k in (5, 30):  # 30 > 20 = ntotal: padded with -1 / inf as unsharded
        D_, I_ = jann.search(sharded, xq, k)
        same((D_, I_), jann.search(index, xq, k))
    assert (np.asarray(I_)[:, 20:] == -1).all()


def test_fp16_placement_equals_fp16_index(xb, xq, mesh):
    ref = jann.search(jann.add(jann.index_factory(D, "Flat(float16)"), xb), xq, 10)
    index = jann.add(jann.index_factory(D, "Flat"), xb)
    placed = jann.shard(index, mesh, dtype="float16")
    assert placed.index.vectors.dtype == jnp.float16
    same(jann.search(placed, xq, 10), ref)


def test_two_dimensional_mesh_shards_and_splits_queries(xb, xq):
    grid = jax.make_mesh((4, 2), ("shard", "replica"))
    index = jann.add(jann.index_factory(D, "Flat"), xb)
    sharded = jann.shard(index, grid, axis="shard", query_axis="replica")
    assert sharded.nshards == 4
    same(jann.search(sharded, xq, 10), jann.search(index, xq, 10))


def test_selector_range_search_and_reconstruct(xb, xq, mesh):
    index = jann.add(jann.index_factory(D, "Flat"), xb)
    sharded = jann.shard(index, mesh)
    sel = jann.IDSelectorRange(100, 600)
    same(jann.search(sharded, xq, 8, selector=sel), jann.search(index, xq, 8, selector=sel))
    lims_a, d_a, i_a = jann.range_search(index, xq, 12.0)
    lims_b, d_b, i_b = jann.range_search(sharded, xq, 12.0)
    np.testing.assert_array_equal(np.asarray(lims_a), np.asarray(lims_b))
    for q in range(xq.shape[0]):
        a = slice(int(lims_a[q]), int(lims_a[q + 1]))
        assert sorted(zip(np.asarray(i_a[a]), np.asarray(d_a[a]))) == \
            sorted(zip(np.asarray(i_b[a]), np.asarray(d_b[a])))
    ids = [0, 7, 999, 1002]
    np.testing.assert_array_equal(np.asarray(jann.reconstruct(sharded, ids)), xb[ids])
    with pytest.raises(jann.IdNotFoundError):
        jann.reconstruct(sharded, [1003])


# -------------------------------------------------------------------------- IVF
@pytest.fixture(scope="module")
def ivf_indexes(xb):
    out = {}
    for description in ("IVF16,Flat", "IVF16,PQ4x4"):
        index = jann.train(jann.index_factory(D, description), xb, key=jax.random.key(1))
        out[description] = jann.add(index, xb)
    return out


@pytest.mark.parametrize("description", ["IVF16,Flat", "IVF16,PQ4x4"])
def test_ivf_sharded_and_replicated_equal_unsharded(description, ivf_indexes, xq, mesh):
    index = ivf_indexes[description]
    ref = jann.search(index, xq, 10, nprobe=3)
    sharded = jann.shard(index, mesh)
    # every list is spread over the shards: no shard holds more than 1/8 + 1 of a list
    sizes = np.diff(np.asarray(sharded.index.offsets), axis=1)
    whole = np.diff(np.asarray(index.offsets))
    assert (sizes.sum(0) == whole).all() and (sizes.max(0) <= -(-whole // 8)).all()
    # Same ids; distances to float32 rounding: a shard's list scan uses matmul blocks
    # of another shape than the whole index's.
    same(jann.search(sharded, xq, 10, nprobe=3), ref, exact=False)
    same(jann.search(jann.replicate(index, mesh), xq, 10, nprobe=3), ref, exact=False)


def test_ivf_with_an_append_tail_shards_and_streams(xb, xq, mesh):
    """An IVF index holding recent adds in its unsorted tail (jann.ivf.tail) shards into
    sorted shards; a sharded index grown past the tail's minimum streams adds into its
    shards' tails; results stay those of the unsharded index."""
    index = jann.train(jann.index_factory(D, "IVF16,Flat"), xb, key=jax.random.key(1))
    index = jann.reserve(jann.add(index, xb[:900]), (1 << 14) - 900)
    for i in range(900, 1003):
        index = jann.add(index, xb[i:i + 1], donate=True)
    assert int(index.count) - int(index.offsets[-1]) == 103  # in the tail
    want = jann.search(index.flushed(), xq, 10, nprobe=4)
    same(jann.search(index, xq, 10, nprobe=4), want, exact=False)
    sharded = jann.shard(index, mesh)
    same(jann.search(sharded, xq, 10, nprobe=4), want, exact=False)
    grown = jann.reserve(sharded, 8 << 14)
    for i in range(5):
        grown = jann.add(grown, xq[i:i + 1])
    plain = index
    for i in range(5):
        plain = jann.add(plain, xq[i:i + 1])
    assert jann.ntotal(grown) == jann.ntotal(plain) == 1008
    same(jann.search(grown, xq, 10, nprobe=4), jann.search(plain.flushed(), xq, 10, nprobe=4),
         exact=False)


def test_ivf_add_to_sharded_goes_to_least_filled(ivf_indexes, xb, xq, mesh, tmp_path):
    empty = jann.train(jann.index_factory(D, "IVF16,Flat"), xb, key=jax.random.key(1))
    sharded = jann.add(jann.shard(empty, mesh), xb[:501])
    sharded = jann.add(sharded, xb[501:])
    counts = sharded.shard_counts()
    assert counts.sum() == 1003 and counts.max() - counts.min() <= 1
    same(jann.search(sharded, xq, 10, nprobe=3),
         jann.search(ivf_indexes["IVF16,Flat"], xq, 10, nprobe=3), exact=False)
    # IVF keeps its sequential ids after a removal (Flat renumbers): so does the sharded
    sel = jann.IDSelectorRange(0, 200)
    sharded, n = jann.remove_ids(sharded, sel)
    plain, _ = jann.remove_ids(ivf_indexes["IVF16,Flat"], sel)
    assert n == 200
    same(jann.search(sharded, xq, 10, nprobe=3), jann.search(plain, xq, 10, nprobe=3),
         exact=False)
    # ... and numbers new rows after every id it gave, as the unsharded index, also
    # once split again (saved on 8 devices, loaded on 3) or merged back (loaded on none)
    sharded, _ = jann.remove_ids(sharded, [1002])
    jann.save(sharded, tmp_path / "removed")
    for placed in (sharded, jann.load(tmp_path / "removed", mesh=_mesh_of(3)),
                   jann.load(tmp_path / "removed")):
        grown = jann.add(placed, xb[:2])
        _, ids = jann.search(grown, xb[:2], 1, nprobe=16)
        assert np.asarray(ids)[:, 0].tolist() == [1003, 1004]


def test_distributed_training_equals_single_device(xb, xq, mesh):
    xt = xb  # 1003 rows, not a multiple of 8: padded rows carry no weight
    ref = jann.kmeans(xt, 16, key=jax.random.key(3), niter=6)
    rows = jax.device_put(np.pad(xt, ((0, 5), (0, 0))), NamedSharding(mesh, P("x")))
    got = sharding.kmeans_sharded(rows, 16, mesh, key=jax.random.key(3), niter=6, n_valid=1003)
    np.testing.assert_allclose(np.asarray(got.centroids), np.asarray(ref.centroids),
                               rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(got.objective, ref.objective, rtol=1e-5)
    # A sharded untrained IVF index trained on sharded data = the unsharded training.
    plain = jann.add(jann.train(jann.index_factory(D, "IVF16,Flat"), xt, key=jax.random.key(4)),
                     xb)
    sharded = jann.train(jann.shard(jann.index_factory(D, "IVF16,Flat"), mesh), xt,
                         key=jax.random.key(4))
    sharded = jann.add(sharded, xb)
    same(jann.search(sharded, xq, 10, nprobe=2), jann.search(plain, xq, 10, nprobe=2),
         exact=False)


@pytest.mark.parametrize("description", ["PCA8,Flat", "SQ8", "HNSW8,SQ8", "IVF16,Flat"])
def test_replicated_untrained_index_trains_like_unplaced(description, xb, xq, mesh):
    """jann.replicate takes any index, trained or not; jann.train then trains it as the
    unplaced index would be trained (a replicated PCA or SQ index was left untrained)."""
    key = jax.random.key(5)
    plain = jann.add(jann.train(jann.index_factory(D, description), xb, key=key), xb)
    replicated = jann.replicate(jann.index_factory(D, description), mesh)
    assert not replicated.is_trained
    replicated = jann.train(replicated, xb, key=key)
    assert replicated.is_trained
    replicated = jann.add(replicated, xb)
    params = {"ef": 32} if description.startswith("HNSW") else (
        {"nprobe": 3} if description.startswith("IVF") else {})
    same(jann.search(replicated, xq, 10, **params), jann.search(plain, xq, 10, **params),
         exact=False)


# ------------------------------------------------------------------- add / remove
def test_remove_renumbers_like_unsharded_and_refills_emptied_shard(xb, xq, mesh):
    index = jann.add(jann.index_factory(D, "Flat"), xb)
    sharded = jann.shard(index, mesh)
    sel = jann.IDSelectorRange(100, 400)
    index, n_a = jann.remove_ids(index, sel)
    sharded, n_b = jann.remove_ids(sharded, sel)
    assert n_a == n_b == 300
    same(jann.search(sharded, xq, 10), jann.search(index, xq, 10))
    np.testing.assert_array_equal(np.asarray(jann.reconstruct(sharded, [0, 100, 702])),
                                  np.asarray(jann.reconstruct(index, [0, 100, 702])))
    # Empty shard 3 entirely (user ids: an IDMap index), then add: it refills first.
    idmap = jann.shard(jann.add(jann.index_factory(D, "IDMap,Flat"), xb, ids=np.arange(1003)),
                       mesh)
    on_three = np.asarray(idmap.index.ids)[3, : idmap.shard_counts()[3]]
    emptied, n = jann.remove_ids(idmap, jann.IDSelectorBatch(on_three))
    assert n == on_three.size and emptied.shard_counts()[3] == 0
    plain, _ = jann.remove_ids(jann.add(jann.index_factory(D, "IDMap,Flat"), xb,
                                        ids=np.arange(1003)), jann.IDSelectorBatch(on_three))
    same(jann.search(emptied, xq, 10), jann.search(plain, xq, 10))
    # (new vectors: copies of stored ones would tie with them, and which of two equal
    # distances comes first then hangs on the last bit of norms computed in two programs)
    fresh = xb[:50] * 1.5
    refilled = jann.add(emptied, fresh, ids=np.arange(5000, 5050))
    assert refilled.shard_counts()[3] == 50  # the least-filled shard takes all of them
    same(jann.search(refilled, xq, 10),
         jann.search(jann.add(plain, fresh, ids=np.arange(5000, 5050)), xq, 10))


def test_add_is_all_or_nothing(xb, mesh):
    sharded = jann.shard(jann.add(jann.index_factory(D, "IDMap2,Flat"), xb[:100],
                                  ids=np.arange(100)), mesh)
    with pytest.raises(jann.DuplicateIdError):
        jann.add(sharded, xb[:9], ids=np.arange(95, 104))  # 95..99 exist on some shard
    bad = xb[:9].copy()
    bad[4, 2] = np.nan
    with pytest.raises(jann.InvalidInputError, match="NaN"):
        jann.add(sharded, bad, ids=np.arange(200, 209))
    assert jann.ntotal(sharded) == 100
    twice = np.concatenate([xb, xb])  # 100 + 2006 rows > 8 shards * 256: no room in jit
    full = jax.jit(jann.add)(sharded, twice, np.arange(300, 300 + twice.shape[0]))
    assert jann.ntotal(full) == 100
    with pytest.raises(jann.CapacityOverflowError):
        jann.check(full)


# ----------------------------------------------------------------- user code / jit
def test_search_from_user_shard_map_and_jit(xb, xq, mesh):
    index = jann.add(jann.index_factory(D, "Flat"), xb)
    sharded = jann.shard(index, mesh)
    ref = jann.search(index, xq, 6)

    def per_device(block, queries):  # this device's shard: top-k, merged over "x"
        return sharding.search_shard(block, queries, 6, axis_name="x")

    # check_vma=False: jax cannot infer that the merged results agree on every device
    user = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(sharded.spec, P()),
                                 out_specs=(P(), P()), check_vma=False))
    same(user(sharded.index, xq), ref)
    same(jax.jit(lambda ix, q: jann.search(ix, q, 6))(sharded, xq), ref)


def test_no_recompilation_on_repeated_searches(ivf_indexes, xq, mesh, compile_counter):
    sharded = jann.shard(ivf_indexes["IVF16,Flat"], mesh)
    jann.search(sharded, xq, 10, nprobe=3)
    jann.search(sharded, xq[:20], 10, nprobe=4)  # the same buckets of queries and nprobe
    before = compile_counter.count
    for nprobe in (3, 4, 3):
        jann.search(sharded, xq, 10, nprobe=nprobe)
        jann.search(sharded, xq[:20], 10, nprobe=nprobe)
    assert compile_counter.count == before


# -------------------------------------------------------------------- checkpoints
def _mesh_of(size):
    return jax.make_mesh((size,), ("x",), devices=jax.devices()[:size])


def test_save_on_8_load_on_4_1_and_back(ivf_indexes, xq, mesh, tmp_path):
    index = ivf_indexes["IVF16,PQ4x4"]
    ref = jann.search(index, xq, 10, nprobe=3)
    jann.save(jann.shard(index, mesh), tmp_path / "on8")
    path = tmp_path / "on8"
    for size in (4, 1, 8):  # each loaded from the previous one's checkpoint
        loaded = jann.load(path, mesh=_mesh_of(size))
        counts = loaded.shard_counts()
        assert loaded.nshards == size and counts.sum() == 1003
        # 8 -> 4 merges pairs of shards (each differing by one row): off by two at most
        assert counts.max() - counts.min() <= 2
        same(jann.search(loaded, xq, 10, nprobe=3), ref, exact=False)
        if size != 8:
            path = tmp_path / f"from{size}"
            jann.save(loaded, path)
    # 8 -> 3: no divisor either way; every device reads all 8 saved shards.
    three = jann.load(tmp_path / "on8", mesh=_mesh_of(3))
    assert list(three.shard_counts()) == [335, 334, 334]
    same(jann.search(three, xq, 10, nprobe=3), ref, exact=False)
    plain = jann.load(tmp_path / "on8")  # no mesh: one index with every vector
    assert isinstance(plain, jann.IVFIndex) and jann.ntotal(plain) == 1003
    same(jann.search(plain, xq, 10, nprobe=3), ref, exact=False)


def test_checkpoint_of_sequential_flat_keeps_ids_and_detects_corruption(xb, xq, mesh, tmp_path):
    index, _ = jann.remove_ids(jann.add(jann.index_factory(D, "Flat"), xb),
                               jann.IDSelectorRange(0, 10))
    sharded = jann.add(jann.shard(index, mesh), xb[:5])
    ref = jann.search(jann.add(index, xb[:5]), xq, 10)
    jann.save(sharded, tmp_path / "c")
    same(jann.search(jann.load(tmp_path / "c", mesh=mesh), xq, 10), ref)
    plain = jann.load(tmp_path / "c")
    assert isinstance(plain, jann.FlatIndex) and plain.id_mode == "sequential"
    same(jann.search(plain, xq, 10), ref)
    replicated = jann.replicate(index, mesh)
    jann.save(replicated, tmp_path / "r")
    assert jann.load(tmp_path / "r", mesh=mesh).shard_axis is None
    version = (tmp_path / "c" / "LATEST").read_text()
    config = tmp_path / "c" / version / "config.json"
    text = config.read_text()
    digest = text.split('"sha256_shards": [')[1].split('"')[1]
    config.write_text(text.replace(digest, "0" * 64, 1))
    with pytest.raises(jann.CheckpointError, match="checksum"):
        jann.load(tmp_path / "c", mesh=mesh)


# ---------------------------------------------------------------------- bad input
def test_bad_input_is_refused_clearly(xb, mesh, tmp_path):
    index = jann.add(jann.index_factory(D, "Flat"), xb[:50])
    with pytest.raises(jann.InvalidInputError, match=r"'y' is not an axis.*\('x',\)"):
        jann.shard(index, mesh, axis="y")
    with pytest.raises(jann.InvalidInputError, match="say which one"):
        jann.shard(index, jax.make_mesh((4, 2), ("a", "b")))
    with pytest.raises(jann.InvalidInputError, match="jax.sharding.Mesh"):
        jann.shard(index, jax.devices())
    with pytest.raises(jann.InvalidInputError, match="replicate places any index"):
        jann.shard(jann.index_factory(D, "PCA8,Flat"), mesh)
    sharded = jann.shard(index, mesh)
    with pytest.raises(jann.InvalidInputError, match="already placed"):
        jann.shard(sharded, mesh)
    with pytest.raises(jann.InvalidInputError, match="Flat indexes"):
        jann.shard(jann.index_factory(D, "IVF4,Flat"), mesh, dtype="float16")
    with pytest.raises(jann.InvalidInputError, match="x64"):
        jann.shard(index, mesh, ids="int64")
    with pytest.raises(jann.InvalidInputError, match="twice"):
        jann.to_devices(index, [jax.devices()[0]] * 2)
    with pytest.raises(jann.InvalidInputError, match=r"nprobe.*accepts \[.backend.\]"):
        jann.search(sharded, xb[:2], 3, nprobe=2)
    with pytest.raises(jann.CheckpointError, match="unshard"):
        jann.serialize(sharded)
    jann.save(sharded, tmp_path / "s")
    with pytest.raises(jann.InvalidInputError, match="'x' is not an axis|say which one"):
        jann.load(tmp_path / "s", mesh=jax.make_mesh((2, 4), ("p", "q")))
    assert jann.load(tmp_path / "s", mesh=jax.make_mesh((2, 4), ("p", "q")), axis="q").nshards == 4
    assert isinstance(jann.unshard(sharded), jann.FlatIndex)
    nan_rows = np.pad(xb, ((0, 5), (0, 0)))
    nan_rows[9, 1] = np.nan
    nan_rows = jax.device_put(nan_rows, NamedSharding(mesh, P("x")))  # checked in place
    with pytest.raises(jann.InvalidInputError, match="row 9"):
        sharding.kmeans_sharded(nan_rows, 4, mesh, key=jax.random.key(0), niter=1)


@pytest.mark.skipif(not jax.config.jax_enable_x64, reason="int32 ids matter under x64 "
                    "(tests/test_sharding.py runs this case with JAX_ENABLE_X64=1)")
def test_int32_ids_placement_refuses_ids_that_do_not_fit(xb, xq, mesh):
    wide = jann.add(jann.index_factory(D, "IDMap,Flat"), xb[:50], ids=np.arange(50) + 2**33)
    with pytest.raises(jann.InvalidInputError, match="do not fit int32"):
        jann.shard(wide, mesh, ids="int32")
    index = jann.add(jann.index_factory(D, "IDMap,Flat"), xb[:50], ids=np.arange(50))
    narrow = jann.shard(index, mesh, ids="int32")
    assert narrow.index.ids.dtype == jnp.int32 and index.ids.dtype == jnp.int64
    with pytest.raises(jann.InvalidInputError, match="int32 ids"):
        jann.add(narrow, xb[:2], ids=[60, 2**32])  # refused whole, never truncated
    assert jann.ntotal(narrow) == 50
    same(jann.search(jann.add(narrow, xb[50:52], ids=[60, 61]), xq, 5),
         jann.search(jann.add(index, xb[50:52], ids=[60, 61]), xq, 5))


# ------------------------------------------------------------------------- graph
def _exact_ids(xb, xq, k, removed=()):
    d = ((xq[:, None, :].astype(np.float64) - xb[None]) ** 2).sum(-1)
    d[:, np.asarray(removed, int)] = np.inf
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def _recall(ids, exact):
    return np.mean([len(set(a) & set(b)) / exact.shape[1] for a, b in zip(np.asarray(ids), exact)])


def test_graph_one_sub_graph_per_shard(xb, xq, mesh, tmp_path):
    """A graph index is sharded as one sub-graph per device (every 8th vector); searches
    merge the sub-graphs' results. Adds extend the least-filled sub-graphs, removals never
    come back, reconstruct finds every id, and checkpoints restore onto 8 devices (as
    saved), 4 (rebuilt) and none (one merged graph). Random data: the sub-graphs are
    tiny, so ef=64 searches them nearly exhaustively and recall checks the plumbing."""
    index = jann.add(jann.index_factory(D, "HNSW4"), xb[:800])         # degree 8
    sharded = jann.shard(index, mesh)
    counts = sharded.shard_counts()
    assert counts.sum() == 800 and counts.max() - counts.min() <= 1
    whole = sum(sharding.device_bytes(index).values())    # capacity 1024, shards 256 each
    assert all(b < whole / 3 for b in sharding.device_bytes(sharded).values())
    _, ids = jann.search(sharded, xq, 10, ef=64)
    assert _recall(ids, _exact_ids(xb[:800], xq, 10)) >= 0.98
    d_half, _ = jann.search(sharded, xq, 10, ef=64, gather_fraction=0.5)  # a float knob
    assert np.isfinite(np.asarray(d_half)).all()
    same(jann.search(jann.replicate(index, mesh), xq, 10, ef=64),
         jann.search(index, xq, 10, ef=64), exact=False)

    sharded = jann.add(sharded, xb[800:])                               # ids 800..1002
    counts = sharded.shard_counts()
    assert counts.sum() == 1003 and counts.max() - counts.min() <= 1
    _, ids = jann.search(sharded, xq, 10, ef=64)
    assert _recall(ids, _exact_ids(xb, xq, 10)) >= 0.98
    victims = np.unique(np.asarray(ids)[:, :2])
    sharded, n = jann.remove_ids(sharded, jann.IDSelectorBatch(victims))
    assert n == len(victims) and jann.ntotal(sharded) == 1003 - n
    _, ids = jann.search(sharded, xq, 10, ef=64)
    assert not np.isin(np.asarray(ids), victims).any()
    assert _recall(ids, _exact_ids(xb, xq, 10, victims)) >= 0.98
    keep = np.setdiff1d(np.arange(1003), victims)[[0, -1]]
    np.testing.assert_allclose(np.asarray(jann.reconstruct(sharded, keep)), xb[keep])

    jann.save(sharded, tmp_path / "graph")
    ref = jann.search(sharded, xq, 10, ef=64)
    same(jann.search(jann.load(tmp_path / "graph", mesh=mesh), xq, 10, ef=64), ref)
    four = jann.load(tmp_path / "graph", mesh=_mesh_of(4))
    plain = jann.load(tmp_path / "graph")
    assert four.nshards == 4 and isinstance(plain, jann.GraphIndex)
    for restored in (four, plain):
        assert jann.ntotal(restored) == 1003 - n
        _, ids = jann.search(restored, xq, 10, ef=64)
        assert not np.isin(np.asarray(ids), victims).any()
        assert _recall(ids, _exact_ids(xb, xq, 10, victims)) >= 0.95
    with pytest.raises(jann.InvalidInputError, match="graph_degree"):
        jann.shard(jann.add(jann.index_factory(D, "HNSW4"), xb[:60]), mesh)
    assert np.asarray(jann.add(plain, xb[:3]).ids)[jann.ntotal(plain):][:3].tolist() == \
        [1003, 1004, 1005]
