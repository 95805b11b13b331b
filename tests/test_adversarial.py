"""Bad input, table-driven over every kind of index: each call raises the named
`jann.JannError` and leaves the index bitwise as it was (no partial write, no raw
exception from numpy, jax or XLA)."""

import jax
import numpy as np
import pytest

import jann

D = 8
KINDS = ("Flat", "IDMap2,Flat", "IVF4,Flat", "IVF4,SQ8", "PCA4,IVF4,Flat", "HNSW8",
         "IVF4,Flat,RFlat")


@pytest.fixture(scope="module")
def indexes():
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((300, D)).astype(np.float32)
    out = {}
    for kind in KINDS:
        index = jann.train(jann.index_factory(D, kind), xb, key=0)
        ids = {"ids": np.arange(300) * 3} if kind.startswith("IDMap") else {}
        out[kind] = jann.add(index, xb, **ids)
    return out


def _rows(n=2, d=D, fill=None, dtype=np.float32):
    x = np.random.default_rng(1).standard_normal((n, d)).astype(dtype)
    if fill is not None:
        x[0, 0] = fill
    return x


def _searchable(kind):
    return {"nprobe": 2} if "IVF" in kind else {}


# (case id, function of (index, kind), expected error class)
CASES = [
    ("add wrong dimension", lambda ix, k: jann.add(ix, _rows(d=D + 1), **_ids(k)),
     jann.InvalidInputError),
    ("add 1-D", lambda ix, k: jann.add(ix, _rows()[0], **_ids(k, 1)), jann.InvalidInputError),
    ("add 3-D", lambda ix, k: jann.add(ix, _rows()[None], **_ids(k)), jann.InvalidInputError),
    ("add NaN", lambda ix, k: jann.add(ix, _rows(fill=np.nan), **_ids(k)),
     jann.InvalidInputError),
    ("add inf", lambda ix, k: jann.add(ix, _rows(fill=np.inf), **_ids(k)),
     jann.InvalidInputError),
    ("add strings", lambda ix, k: jann.add(ix, np.full((2, D), "a"), **_ids(k)),
     jann.InvalidDtypeError),
    ("add complex", lambda ix, k: jann.add(ix, _rows().astype(np.complex64), **_ids(k)),
     jann.InvalidDtypeError),
    ("add ids to a numbering index or none to IDMap",
     lambda ix, k: jann.add(ix, _rows(), **({} if k.startswith("IDMap") else {"ids": [1, 2]})),
     jann.InvalidInputError),
    ("search wrong dimension", lambda ix, k: jann.search(ix, _rows(d=D - 1), 3),
     jann.InvalidInputError),
    ("search NaN", lambda ix, k: jann.search(ix, _rows(fill=np.nan), 3, **_searchable(k)),
     jann.InvalidInputError),
    ("search k=0", lambda ix, k: jann.search(ix, _rows(), 0), jann.InvalidInputError),
    ("search k=-1", lambda ix, k: jann.search(ix, _rows(), -1), jann.InvalidInputError),
    ("search k=1.5", lambda ix, k: jann.search(ix, _rows(), 1.5), jann.InvalidInputError),
    ("search k=True", lambda ix, k: jann.search(ix, _rows(), True), jann.InvalidInputError),
    ("search unknown keyword", lambda ix, k: jann.search(ix, _rows(), 3, nprob=2),
     jann.InvalidInputError),
    ("search selector not a selector", lambda ix, k: jann.search(ix, _rows(), 3, selector=[1]),
     jann.InvalidInputError),
    ("search absurd k", lambda ix, k: jann.search(ix, _rows(), 10**9), jann.InvalidInputError),
    ("range NaN radius", lambda ix, k: jann.range_search(ix, _rows(), float("nan"),
                                                         **_searchable(k)),
     jann.InvalidInputError),
    ("reconstruct missing id", lambda ix, k: jann.reconstruct(ix, [10**6]),
     jann.IdNotFoundError),
    ("reconstruct float ids", lambda ix, k: jann.reconstruct(ix, [1.5]), jann.InvalidDtypeError),
    ("reconstruct id past int32", lambda ix, k: jann.reconstruct(ix, [2**32 + 1]),
     jann.IdNotFoundError),
    ("remove float ids", lambda ix, k: jann.remove_ids(ix, [1.5]), jann.InvalidDtypeError),
    ("remove reversed range", lambda ix, k: jann.remove_ids(ix, jann.IDSelectorRange(5, 1)),
     jann.InvalidInputError),
    ("train NaN", lambda ix, k: jann.train(ix, _rows(n=300, fill=np.nan)),
     jann.InvalidInputError),
    ("train key not a key", lambda ix, k: jann.train(ix, _rows(n=300), key="seed"),
     jann.InvalidInputError),
]


def _ids(kind, n=2):
    return {"ids": np.arange(10**5, 10**5 + n)} if kind.startswith("IDMap") else {}


def _leaves(index):
    return [np.asarray(a).copy() for a in jax.tree.leaves(index)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case,call,error", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_and_changes_nothing(indexes, kind, case, call, error):
    index = indexes[kind]
    before = _leaves(index)
    with pytest.raises(error):
        call(index, kind)
    after = _leaves(index)
    assert len(before) == len(after)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


def test_duplicate_ids_refused_whole(indexes):
    index = indexes["IDMap2,Flat"]
    before = _leaves(index)
    with pytest.raises(jann.DuplicateIdError):
        jann.add(index, _rows(3), ids=[10**6, 10**6 + 1, 0])  # 0 is stored already
    for a, b in zip(before, _leaves(index)):
        np.testing.assert_array_equal(a, b)
