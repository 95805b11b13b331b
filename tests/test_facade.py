"""jann.Index, FAISS's object habits: the README's FAISS script runs on it, its results
are the functional API's, mutation donates the old state, bad attributes and values are
refused by name, and write_index / read_index round-trip jann checkpoints and FAISS files."""

from pathlib import Path

import faiss
import jax
import numpy as np
import pytest

import jann
from jann import datasets

K = 10


@pytest.fixture(scope="module")
def data():
    d = datasets.load_embedded()
    return d["base"][:4000], d["queries"][:30]


@pytest.mark.filterwarnings("ignore")
def test_the_faiss_script_runs_and_answers_as_the_functional_api(data, tmp_path):
    xb, xq = data
    # as in README "Coming from FAISS"
    ix = jann.Index(xb.shape[1], "IVF32,PQ14")
    ix.train(xb)
    ix.add(xb)
    ix.nprobe = 8
    D, I = ix.search(xq, K)
    assert isinstance(D, np.ndarray) and I.shape == (len(xq), K) and ix.ntotal == len(xb)
    assert isinstance(ix, jann.IndexHandle)  # index types still subclass jann.Index
    want_d, want_i = jann.search(ix.state, xq, K, nprobe=8)
    np.testing.assert_array_equal(I, np.asarray(want_i))
    np.testing.assert_allclose(D, np.asarray(want_d))
    assert ix.nprobe == 8 and ix.search(xq, K, nprobe=1)[1].tolist() != I.tolist()
    assert ix.remove_ids(jann.IDSelectorRange(0, 100)) == 100 and ix.ntotal == len(xb) - 100
    jann.write_index(ix, tmp_path / "ckpt")
    again = jann.read_index(tmp_path / "ckpt")
    again.nprobe = 8
    np.testing.assert_array_equal(again.search(xq, K)[1], ix.search(xq, K)[1])
    # the state is the pytree: jit it as any jann index
    jitted = jax.jit(lambda state, q: jann.search(state, q, K, nprobe=8))(ix.state, xq)
    np.testing.assert_array_equal(np.asarray(jitted[1]), ix.search(xq, K)[1])


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("description", ["Flat", "IVF16,Flat", "PCA32,IVF16,SQ8", "HNSW8",
                                         "IDMap,Flat"])
def test_reset_empties_keeps_training_and_numbers_from_zero(description, data):
    xb, xq = data
    xb = xb[:1000]
    ix = jann.Index(xb.shape[1], description)
    ix.train(xb)
    ids = np.arange(len(xb)) + 500 if description.startswith("IDMap") else None
    ix.add(xb) if ids is None else ix.add_with_ids(xb, ids)
    trained = ix.state
    ix.reset()
    assert ix.ntotal == 0 and ix.is_trained and ix.state.capacity <= 256
    if description.startswith("IVF"):  # the coarse quantizer is the trained one
        np.testing.assert_array_equal(np.asarray(ix.state.centroids),
                                      np.asarray(trained.centroids))
    ix.add(xb[:40]) if ids is None else ix.add_with_ids(xb[:40], ids[:40])
    assert ix.ntotal == 40
    _, found = ix.search(xb[:5], 1, **({"nprobe": 16} if "IVF" in description else {}))
    # new rows are numbered 0, 1, ... as after FAISS's reset (ids given are kept)
    np.testing.assert_array_equal(found[:, 0], np.arange(5) if ids is None else ids[:5])
    if description == "IVF16,Flat":
        ref = faiss.index_factory(xb.shape[1], description)
        ref.train(xb)
        ref.add(xb)
        ref.reset()
        ref.add(xb[:40])
        faiss.extract_index_ivf(ref).nprobe = 16
        np.testing.assert_array_equal(ref.search(xb[:5], 1)[1][:, 0], found[:, 0])


@pytest.mark.filterwarnings("ignore")
def test_ids_reconstruct_and_graph_parameters(data):
    xb, xq = data
    ix = jann.Index(xb.shape[1], "IDMap2,Flat", "ip")
    ix.add_with_ids(xb[:500], np.arange(500) * 3)
    np.testing.assert_array_equal(ix.reconstruct(9), xb[3])
    np.testing.assert_array_equal(ix.reconstruct_n(0, 1).shape, (1, xb.shape[1]))
    with pytest.raises(jann.DuplicateIdError):  # refused after donating: the state survives
        ix.add_with_ids(xb[500:502], [3, 10_000])
    assert ix.ntotal == 500 and ix.search(xq[:2], 3)[1].max() < 1500
    lims, _, ids = ix.range_search(xq[:2], 0.9 * float(ix.search(xq[:2], 1)[0].min()))
    assert lims.shape == (3,) and set(ids.tolist()) <= set(range(0, 1500, 3))
    graph = jann.Index(xb.shape[1], "HNSW8")
    graph.add(xb[:300])
    graph.efSearch = 32  # FAISS's name; jann's is ef
    assert graph.ef == 32 and graph.search_parameters == {"ef": 32}


def test_mutation_donates_the_old_state(data):
    xb, _ = data
    ix = jann.Index(xb.shape[1], "Flat")
    ix.add(xb[:100])
    old = ix.state
    ix.add(xb[100:110])  # staged: written (donating) at the next read
    assert ix.ntotal == 110
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(old.vectors))


@pytest.mark.parametrize("description", ["Flat", "IVF16,Flat", "IDMap,HNSW16"])
def test_small_adds_are_staged_and_every_read_sees_them(description, data):
    xb, xq = data
    ix = jann.Index(xb.shape[1], description)
    ix.train(xb[:2000])
    user_ids = description.startswith("IDMap")

    def add(start, stop):
        if user_ids:
            ix.add_with_ids(xb[start:stop], np.arange(start, stop) + 7)
        else:
            ix.add(xb[start:stop])

    add(0, 1000)  # written at once (more than STAGED_ADD_ROWS rows)
    for i in range(1000, 1040):
        add(i, i + 1)
    add(1040, 1050)
    assert len(ix._staged) == 41
    add(1050, 1200)  # a large add writes the staged rows first, in order
    assert not ix._staged and ix.ntotal == 1200
    for i in range(1200, 1210):
        add(i, i + 1)
    assert ix.ntotal == 1210 and not ix._staged
    ref = jann.train(jann.index_factory(xb.shape[1], description), xb[:2000])
    ref = jann.add(ref, xb[:1210], np.arange(1210) + 7 if user_ids else None)
    np.testing.assert_array_equal(ix.search(xq, K)[1], np.asarray(jann.search(ref, xq, K)[1]))
    for i in range(1210, 1215):
        add(i, i + 1)
    np.testing.assert_allclose(ix.reconstruct(1214 + (7 if user_ids else 0)), xb[1214],
                               rtol=1e-6)
    assert ix.remove_ids(jann.IDSelectorRange(0, 5000)) == 1215


def test_a_staged_add_is_checked_at_once_and_loses_nothing(data):
    xb, _ = data
    ix = jann.Index(xb.shape[1], "Flat")
    ix.add(xb[:10])
    ix.add(xb[10:11])
    bad = xb[11:12].copy()
    bad[0, 3] = np.nan
    with pytest.raises(jann.InvalidInputError, match="NaN"):
        ix.add(bad)
    with pytest.raises(jann.InvalidInputError, match="dimension"):
        ix.add(xb[11:12, :5])
    row = xb[11:12].copy()
    ix.add(row)
    row[:] = 0.0  # the caller reuses its buffer: the staged row is a copy
    assert ix.ntotal == 12
    np.testing.assert_array_equal(ix.reconstruct(11), xb[11])
    strict = jann.Index(xb.shape[1], "IDMap2,Flat")
    strict.add_with_ids(xb[:3], np.arange(3))
    with pytest.raises(jann.DuplicateIdError):  # IDMap2: written (and refused) at once
        strict.add_with_ids(xb[3:4], [1])
    assert strict.ntotal == 3
    ix.add(xb[12:13])
    ix.state = jann.index_factory(xb.shape[1], "Flat")  # replaces rows staged for the old
    assert ix.ntotal == 0


def test_bad_attributes_and_values_are_refused_by_name():
    ix = jann.Index(8, "IVF4,Flat")
    with pytest.raises(AttributeError, match="nprobe"):
        ix.nprob = 3  # a typo is not silently a new attribute
    with pytest.raises(jann.InvalidInputError, match="nprobe"):
        ix.nprobe = 0
    with pytest.raises(AttributeError, match="efSearch"):
        jann.Index(8, "Flat").efSearch = 3
    with pytest.raises(jann.NotTrainedError):
        ix.add(np.zeros((2, 8), np.float32))
    with pytest.raises(jann.InvalidInputError):
        ix.state = "not an index"
    with pytest.raises(jann.FactoryStringError):
        jann.Index(8, "IVF4,Flatt")
    assert ix.nprobe == 1  # FAISS's default


@pytest.mark.filterwarnings("ignore")
def test_read_index_takes_faiss_files(data, tmp_path):
    xb, xq = data
    ref = faiss.index_factory(xb.shape[1], "IVF16,Flat")
    ref.train(xb)
    ref.add(xb)
    ref.nprobe = 4
    faiss.write_index(ref, str(tmp_path / "f.faiss"))
    ix = jann.read_index(tmp_path / "f.faiss")
    ix.nprobe = 4
    np.testing.assert_array_equal(ix.search(xq, K)[1], ref.search(xq, K)[1])


@pytest.mark.filterwarnings("ignore")
def test_the_readme_script_runs_as_written(tmp_path, monkeypatch):
    """The README's facade block itself, on data of its shape (d divisible by 32)."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    after = readme[readme.index("`jann.Index` keeps FAISS's object habits"):]
    start = after.index("```python") + len("```python")
    block = after[start:after.index("```", start)]
    rng = np.random.default_rng(0)
    d = 64
    xt = rng.standard_normal((5000, d)).astype(np.float32)
    namespace = {"d": d, "xt": xt, "xb": xt[:3000], "xq": xt[:5]}
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["ix"].ntotal == 2900 and namespace["I"].shape == (5, 10)
