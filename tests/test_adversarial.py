"""Bad input, table-driven over every kind of index: each call raises the named
`jann.JannError` and leaves the index bitwise as it was (no partial write, no raw
exception from numpy, jax or XLA); and the server's write-ahead log under kill -9."""

import os
import signal
import struct
import time
import warnings

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


# ------------------------------------------------------------------ write-ahead log
WAL_TRIALS = 60


def _log_writer(directory, ack_fd, seed):
    """A server's write path, in a forked child: appends records (row i = [i] * 4), one
    append in five failing as on a full disk (its bytes written, fsync refused), and
    reports each acknowledged record's number on ack_fd, until it is killed."""
    import errno
    import random
    from jann.serve import write_log

    rng, real_fsync = random.Random(seed), os.fsync

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    log = write_log.WriteLog(directory, "v000001")
    for i in range(1_000_000):
        write_log.os.fsync = full_disk if rng.random() < 0.2 else real_fsync
        try:
            log.append("add", np.full((1, 4), i, np.float32), None)
        except OSError:
            continue
        os.write(ack_fd, struct.pack("<I", i))


def _replayed_rows(directory):
    from jann.serve import write_log
    log = write_log.WriteLog(directory, "v000001")
    index, records = log.replay(jann.index_factory(4, "Flat"))
    rows = np.asarray(jann.reconstruct_n(index, 0, records))[:, 0].astype(int).tolist()
    return log, rows


def test_write_log_keeps_every_acknowledged_write_through_kill_9(tmp_path):
    """kill -9 at random points of a writer whose appends fail now and then: after each,
    a restart replays every acknowledged record, in order; the only other record it may
    find is the one being written when the kill came (never acknowledged). A write
    acknowledged after the restart is then found too (no torn bytes left ahead of it)."""
    rng = np.random.default_rng(7)
    for trial in range(WAL_TRIALS):
        directory = tmp_path / f"t{trial}"
        directory.mkdir()
        read_end, write_end = os.pipe()
        with warnings.catch_warnings():  # the child touches no jax: numpy and files only
            warnings.simplefilter("ignore", RuntimeWarning)
            pid = os.fork()
        if pid == 0:
            os.close(read_end)
            try:
                _log_writer(str(directory), write_end, trial)
            finally:
                os._exit(0)
        os.close(write_end)
        time.sleep(float(rng.uniform(0.001, 0.03)))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        with os.fdopen(read_end, "rb") as pipe:
            acked = [v for (v,) in struct.iter_unpack("<I", pipe.read())]
        log, rows = _replayed_rows(str(directory))
        assert rows[: len(acked)] == acked, (trial, acked, rows)
        extra = rows[len(acked):]
        assert len(extra) <= 1 and all(v > max(acked, default=-1) for v in extra), (
            trial, acked, rows)
        log.append("add", np.full((1, 4), -1, np.float32), None)
        log.close()
        _, after = _replayed_rows(str(directory))
        assert after == rows + [-1]
