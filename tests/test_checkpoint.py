"""save / load (Orbax) and serialize / deserialize round trips, atomicity, corruption."""

import json
import fcntl
import os
import re
import subprocess
import sys
import threading

import numpy as np
import pytest

import jann
from jann import checkpoint

from conftest import flat


def _index(rng, description="IDMap2,Flat", metric="l2", n=300):
    xb = rng.standard_normal((n, 8)).astype(np.float32)
    return jann.add(flat(8, description, metric=metric), xb, ids=np.arange(n) * 5) \
        if "IDMap" in description else jann.add(flat(8, description, metric=metric), xb)


def _same_results(a, b, rng):
    xq = rng.standard_normal((5, 8)).astype(np.float32)
    for x, y in zip(jann.search(a, xq, 7), jann.search(b, xq, 7)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("description,metric", [
    ("Flat", "l2"), ("IDMap2,Flat", "ip"), ("Flat(bfloat16)", "l2"), ("IDMap,Flat(float16)", "cosine")])
def test_save_load_same_results(description, metric, rng, tmp_path):
    index = _index(rng, description, metric)
    jann.save(index, tmp_path / "ckpt")
    loaded = jann.load(tmp_path / "ckpt")
    assert type(loaded) is type(index) and loaded.describe() == index.describe()
    assert loaded.metric == metric and loaded.vectors.dtype == index.vectors.dtype
    _same_results(index, loaded, rng)


def test_empty_index_round_trips(tmp_path):
    empty = flat(5)
    jann.save(empty, tmp_path / "e")
    assert jann.ntotal(jann.load(tmp_path / "e")) == 0
    assert jann.ntotal(jann.deserialize(jann.serialize(empty))) == 0


def test_serialize_round_trip(rng):
    index = _index(rng)
    data = jann.serialize(index)
    assert isinstance(data, bytes) and b"pickle" not in data[:100]
    _same_results(index, jann.deserialize(data), rng)


def test_resave_replaces_atomically_and_keeps_one_version(rng, tmp_path):
    path = tmp_path / "ckpt"
    first = _index(rng, n=100)
    jann.save(first, path)
    second = jann.add(first, rng.standard_normal((5, 8)).astype(np.float32), ids=[1, 2, 3, 4, 6])
    assert jann.save(second, path) == "v000002"
    assert jann.ntotal(jann.load(path)) == 105
    # the version LATEST named before stays until the next save (a reader may be on it),
    # and nothing save did not write is touched
    (path / "vectors_backup.npy").write_bytes(b"mine")
    (path / ".gitignore").write_text("*\n")
    assert sorted(os.listdir(path)) == [".gitignore", ".jann-save.lock", "LATEST", "v000001",
                                        "v000002", "vectors_backup.npy"]
    assert jann.save(first, path) == "v000003"
    assert sorted(os.listdir(path)) == [".gitignore", ".jann-save.lock", "LATEST", "v000002",
                                        "v000003", "vectors_backup.npy"]


def test_crash_mid_save_leaves_previous_checkpoint(rng, tmp_path, monkeypatch):
    path = tmp_path / "ckpt"
    first = _index(rng, n=100)
    jann.save(first, path)

    def boom(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(checkpoint.json, "dump", boom)
    with pytest.raises(OSError, match="simulated"):
        jann.save(_index(rng, n=200), path)
    monkeypatch.undo()
    _same_results(first, jann.load(path), rng)
    assert not [e for e in os.listdir(path) if e.startswith(".tmp")]


def test_truncated_tampered_and_future_bytes(rng):
    data = jann.serialize(_index(rng))
    with pytest.raises(jann.CheckpointError, match="truncated"):
        jann.deserialize(data[:-10])
    tampered = bytearray(data)
    tampered[-5] ^= 0xFF
    with pytest.raises(jann.CheckpointError, match="checksum"):
        jann.deserialize(bytes(tampered))
    future = bytearray(data)
    future[8] = 99  # the format version field
    with pytest.raises(jann.CheckpointError, match="upgrade"):
        jann.deserialize(bytes(future))
    with pytest.raises(jann.CheckpointError, match="magic"):
        jann.deserialize(b"\x80\x04\x95pickle-bytes")


def test_corrupt_checkpoint_directories(rng, tmp_path):
    path = tmp_path / "ckpt"
    jann.save(_index(rng), path)
    version = (path / "LATEST").read_text()
    config_file = path / version / "config.json"
    config = json.loads(config_file.read_text())

    config["version"] = 999
    config_file.write_text(json.dumps(config))
    with pytest.raises(jann.CheckpointError, match="upgrade"):
        jann.load(path)

    config["version"] = 1
    name = next(iter(config["arrays"]))
    config["arrays"][name]["sha256"] = "0" * 64
    config_file.write_text(json.dumps(config))
    with pytest.raises(jann.CheckpointError, match="checksum"):
        jann.load(path)

    config_file.write_text("{not json")
    with pytest.raises(jann.CheckpointError, match="config.json"):
        jann.load(path)


def test_damaged_array_files(rng, tmp_path):
    path = tmp_path / "ckpt"
    jann.save(_index(rng), path)
    version = (path / "LATEST").read_text()
    for root, _, files in os.walk(path / version / "arrays"):
        for f in files:
            full = os.path.join(root, f)
            if os.path.getsize(full) > 100:
                with open(full, "r+b") as fh:
                    fh.truncate(os.path.getsize(full) // 2)
    with pytest.raises(jann.CheckpointError):
        jann.load(path)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(jann.CheckpointError, match="not a jann checkpoint"):
        jann.load(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("hello")
    with pytest.raises(jann.CheckpointError, match="not a jann checkpoint"):
        jann.load(tmp_path / "plain")
    with pytest.raises(jann.CheckpointError, match="refusing"):
        jann.save(flat(3), tmp_path / "plain")


def test_loads_during_saves_see_a_whole_version_and_writers_take_turns(rng, tmp_path):
    path = tmp_path / "ckpt"
    indexes = [_index(rng, n=100 + i) for i in range(2)]
    jann.save(indexes[0], path)
    done, loaded, errors = threading.Event(), [], []

    def reader():
        while not done.is_set():
            try:
                loaded.append(jann.ntotal(jann.load(path)))
            except Exception as e:  # noqa: BLE001  (the test fails on any)
                errors.append(repr(e))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(12):
            jann.save(indexes[i % 2], path)
    finally:
        done.set()
        thread.join()
    assert not errors and loaded and set(loaded) <= {100, 101}
    # A second writer while one holds the checkpoint: a clear error, nothing written.
    with open(path / ".jann-save.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(jann.CheckpointError, match="another jann.save"):
            jann.save(indexes[1], path)
    assert jann.ntotal(jann.load(path)) == 101


@pytest.mark.parametrize("latest", [b"../elsewhere", b"/tmp", b"\xff\xfe\x00", b"v1/../../x"])
def test_latest_naming_anything_but_a_version_is_refused(rng, tmp_path, latest):
    path = tmp_path / "ckpt"
    jann.save(_index(rng, n=10), path)
    (path / "LATEST").write_bytes(latest)
    with pytest.raises(jann.CheckpointError, match="LATEST"):
        jann.load(path)


@pytest.mark.filterwarnings("ignore:.*training points")
def test_every_metadata_byte_flipped_is_caught_or_harmless(rng, tmp_path):
    """A flipped bit anywhere in the metadata (config.json of a save, the header of
    serialize) raises CheckpointError, or loads an identical index: never a raw
    exception or another index."""
    xb = rng.standard_normal((300, 8)).astype(np.float32)
    index = jann.add(jann.train(jann.index_factory(8, "IVF4,PQ2"), xb, key=0), xb)
    blob = jann.serialize(index)
    header_len = int.from_bytes(blob[12:20], "little")
    start = len(b"JANNIDX\x00") + 12
    want = jann.search(index, np.asarray(index.centroids[:3]), 5, nprobe=4)
    outcomes = {"refused": 0, "same": 0}
    for pos in range(start, start + header_len, 7):  # every 7th byte: ~0.3 s
        flipped = bytearray(blob)
        flipped[pos] ^= 0x10
        try:
            got = jann.deserialize(bytes(flipped))
        except jann.CheckpointError:
            outcomes["refused"] += 1
            continue
        for a, b in zip(want, jann.search(got, np.asarray(index.centroids[:3]), 5, nprobe=4)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        outcomes["same"] += 1
    assert outcomes["refused"] > 0
    path = tmp_path / "ckpt"
    jann.save(index, path)
    config = next(path.glob("v*/config.json"))
    text = config.read_text()
    config.write_text(text.replace('"l2"', '"ip"', 1))  # an edit: metric l2 -> ip
    with pytest.raises(jann.CheckpointError, match="checksum"):
        jann.load(path)
    config.write_text("[" * 100_000)
    with pytest.raises(jann.CheckpointError):
        jann.load(path)



@pytest.mark.parametrize("description,field,value,named", [
    ("Flat", "metric", 5, "metric=5"),
    ("Flat", "metric", "l3", "metric='l3'"),
    ("Flat", "id_mode", "idmap3", "id_mode='idmap3'"),
    ("IVF4,SQ8", "is_trained", "yes", "is_trained='yes'"),
    ("IVF4,SQ8", "by_residual", 1, "by_residual=1"),
    ("IVF4,SQ8", "qtype", "SQ9", "qtype='SQ9'"),     # a nested object's (the codec's)
    ("IVF4,PQ2x4", "nbits", -8, "nbits=-8"),
    ("IVF4,PQ2x4", "M", 2.5, "M=2.5"),
    ("HNSW4", "graph_degree", None, "graph_degree=None"),
])
def test_metadata_fields_are_checked_against_their_declaration(
        rng, tmp_path, description, field, value, named):
    """A checkpoint without a metadata checksum (as older ones are) is still checked
    field by field: each configuration value has its declared type (ints >= 0) and is
    one of the field's choices; anything else is a CheckpointError naming the field."""
    xb = rng.standard_normal((200, 8)).astype(np.float32)
    index = jann.add(jann.train(jann.index_factory(8, description), xb, key=0), xb)
    path = tmp_path / "ckpt"
    jann.save(index, path)
    config_file = next(path.glob("v*/config.json"))
    config = json.loads(config_file.read_text())
    config.pop("sha256")
    edited = []

    def edit(tree):
        if field in tree.get("meta", {}):
            tree["meta"][field] = value
            edited.append(field)
        for child in tree.get("fields", {}).values():
            if isinstance(child, dict) and "type" in child:
                edit(child)

    edit(config["index"])
    assert edited
    config_file.write_text(json.dumps(config))
    with pytest.raises(jann.CheckpointError, match=re.escape(named)):
        jann.load(path)


_SAVE_SHARDED_INT64 = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np, jann
from jax.sharding import Mesh
x = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)
index = jann.add(jann.index_factory(8, "IDMap,Flat"), x, ids=np.arange(40) + 2**40 + 3)
jann.save(jann.shard(index, Mesh(np.array(jax.devices()), ("x",)), ids="int64"), sys.argv[1])
"""


def test_a_sharded_checkpoint_of_64_bit_ids_is_refused_without_x64(tmp_path):
    """Restored onto devices without x64 its ids would come back as 32 bits (2**40 + 3 as
    3): the load names the cause instead."""
    path = tmp_path / "sharded64"
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_ENABLE_X64")}
    subprocess.run([sys.executable, "-c", _SAVE_SHARDED_INT64, str(path)], env=env,
                   check=True, capture_output=True, timeout=300)
    with pytest.raises(jann.CheckpointError, match="64-bit integers.*jax_enable_x64"):
        jann.load(path)


_LOAD_A_CHECKPOINT_WITHOUT_ITS_DATA = """
import glob, os, sys, time
import numpy as np
import jann
x = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
jann.save(jann.add(jann.index_factory(8, "HNSW8"), x), sys.argv[1])
version = open(os.path.join(sys.argv[1], "LATEST")).read().strip()
for f in glob.glob(os.path.join(sys.argv[1], version, "arrays", "ocdbt.process_0", "d", "*")):
    os.remove(f)
for _ in range(3):
    try:
        jann.load(sys.argv[1])
    except jann.CheckpointError as exc:
        print("refused:", str(exc)[:60], flush=True)
time.sleep(1)
"""


def test_a_failed_read_prints_no_stray_tracebacks(tmp_path):
    """Orbax reads in an event loop it closes when a read fails; the reads still in flight
    then complete into the closed loop. The user holds a CheckpointError and must not get
    'Event loop is closed' tracebacks on stderr besides (they came seconds later)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", _LOAD_A_CHECKPOINT_WITHOUT_ITS_DATA,
                          str(tmp_path / "ckpt")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("refused: checkpoint") == 3
    assert "Event loop is closed" not in out.stderr and "Traceback" not in out.stderr


def test_only_closed_loop_completions_are_dropped():
    """The filter behind the test above (a CI run once printed an error raised from the
    closed-loop one, which the filter then let through): asyncio's error, and errors
    raised from it or quoting it, are dropped; the same message raised elsewhere and
    other errors are not."""
    import asyncio
    from types import SimpleNamespace
    from jann._orbax import _is_closed_loop_completion

    def caught(fn):
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 (any error is the sample)
            return SimpleNamespace(exc_value=exc, exc_traceback=exc.__traceback__)

    loop = asyncio.new_event_loop()
    loop.close()
    closed = caught(lambda: loop.call_soon_threadsafe(print))

    def wrapped():
        raise ValueError("completion failed") from closed.exc_value

    def quoting():
        raise ValueError(f"completion failed: {closed.exc_value!r}")

    def elsewhere():
        raise RuntimeError("Event loop is closed")

    assert _is_closed_loop_completion(closed)
    assert _is_closed_loop_completion(caught(wrapped))
    assert _is_closed_loop_completion(caught(quoting))
    assert not _is_closed_loop_completion(caught(elsewhere))
    assert not _is_closed_loop_completion(caught(lambda: 1 / 0))
