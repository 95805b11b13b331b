"""Tests for `jann serve` (jann/serve/) and its client (jann/client.py).

Each server is the real command (`python -m jann serve CHECKPOINT --port 0`) in a
subprocess on loopback; the tests talk to it over HTTP, with jann.client or raw
http.client requests, and compare its answers with direct library calls.
"""

import http.client
import os
import json
import re
import sys
import threading

import jax
import numpy as np
import pytest

import jann
from jann.client import Client, ServerError, ServerProcess
from conftest import assert_knn_equal

pytest.importorskip("starlette", reason="jann serve needs the 'serve' extra")
pytest.importorskip("uvicorn", reason="jann serve needs the 'serve' extra")

TOKEN = "s3cret"


# ----------------------------------------------------------------------------- helpers
class Server(ServerProcess):
    """A test server, plus raw requests (each on a fresh connection) for what the client
    would refuse to send."""

    def request(self, method, path, body=None, *, raw: bytes | None = None, token=None):
        """(status, decoded JSON) of one request."""
        host, port = self.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        try:
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()


@pytest.fixture(scope="module")
def ivf(fmnist, tmp_path_factory):
    """A trained IVF16,Flat over 2000 real vectors, and its checkpoint."""
    xb = fmnist["base"][:2000]
    index = jann.index_factory(xb.shape[1], "IVF16,Flat")
    index = jann.add(jann.train(index, xb, key=jax.random.key(0)), xb)
    path = tmp_path_factory.mktemp("ivf") / "ckpt"
    jann.save(index, path)
    return index, path


@pytest.fixture(scope="module")
def ivf_server(ivf, tmp_path_factory):
    server = Server(ivf[1], "--max-batch", "64", "--param", "nprobe=4", "--token", TOKEN,
                    "--max-body-bytes", "200000", "--max-k", "100", "--max-queries", "100")
    yield server
    server.stop()


def test_request_values_are_checked_as_the_library_checks_them(ivf_server, fmnist):
    row = fmnist["queries"][0].tolist()
    for bad in ([[str(v) for v in row]], [[True] + row[1:]], [[None] + row[1:]]):
        status, answer = ivf_server.request("POST", "/search", {"vectors": bad, "k": 3})
        assert status == 422 and "numbers only" in answer["error"]["message"]
    status, answer = ivf_server.request("POST", "/search", raw=b"[" * 100_000 + b"]" * 100_000)
    assert status == 400 and answer["error"]["type"] == "MalformedJSON"
    before = ivf_server.request("GET", "/health")[1]["version"]
    status, answer = ivf_server.request("POST", "/add", {"vectors": []}, token=TOKEN)
    assert status == 200 and answer["added"] == 0 and answer["version"] == before
    # where the checkpoint lives is shown to token holders only
    assert "path" not in ivf_server.request("GET", "/stats")[1]["checkpoint"]
    assert "path" in ivf_server.request("GET", "/stats", token=TOKEN)[1]["checkpoint"]


def test_first_id_of_an_ivf_add_after_removals_is_new(ivf, fmnist):
    """The server's answer names the ids the rows got: after removing the last ids an IVF
    index goes on past them (FAISS would give them again)."""
    from jann.serve.write_log import apply_write
    index, _ = ivf
    index, done = apply_write(index, "remove", None, np.array([1998, 1999]))
    assert done == {"removed": 2}
    index, done = apply_write(index, "add", fmnist["base"][2000:2002], None)
    assert done == {"added": 2, "first_id": 2000}
    _, ids = jann.search(index, fmnist["base"][2000:2002], 1, nprobe=16)
    assert np.asarray(ids)[:, 0].tolist() == [2000, 2001]


def _flat_checkpoint(xb, path):
    index = jann.add(jann.index_factory(xb.shape[1], "Flat"), xb)
    jann.save(index, path)
    return index


def _version(server) -> dict:
    status, health = server.request("GET", "/health")
    assert status == 200
    return health


# -------------------------------------------------------------------- search results
def test_search_equals_library(ivf, ivf_server, fmnist):
    index, _ = ivf
    xq = fmnist["queries"][:50]
    with ivf_server.client() as client:
        for k, nprobe in ((10, 3), (10, 4)):                # one compiled nprobe bucket
            D, I = client.search(xq, k, nprobe=nprobe)
            ref_d, ref_i = jann.search(index, xq, k, nprobe=nprobe)
            assert D.dtype == np.float32 and I.dtype == np.asarray(ref_i).dtype
            np.testing.assert_array_equal(D, np.asarray(ref_d))
            np.testing.assert_array_equal(I, np.asarray(ref_i))
        D, I = client.search(xq[:1], 10, nprobe=4)         # one vector, shape (1, k)
        assert_knn_equal(D, I, np.asarray(ref_d, np.float64)[:1], np.asarray(ref_i)[:1])
        D, I = client.search(np.zeros((0, xq.shape[1]), np.float32), 5)
        assert D.shape == I.shape == (0, 5)


def test_serve_param_is_the_default_of_requests(ivf, ivf_server, fmnist):
    """`jann serve --param nprobe=4`: a request that names no nprobe searches with 4 (as
    users read the flag), compiling nothing new; one that names it overrides."""
    index, _ = ivf
    xq = fmnist["queries"][:20]
    with ivf_server.client() as client:
        compiles = client.stats()["compiled"]["request_compiles"]
        D, I = client.search(xq, 10)
        ref_d, ref_i = jann.search(index, xq, 10, nprobe=4)
        np.testing.assert_array_equal(I, np.asarray(ref_i))
        np.testing.assert_array_equal(D, np.asarray(ref_d))
        assert client.stats()["compiled"]["request_compiles"] == compiles
        _, I1 = client.search(xq, 10, nprobe=1)
        np.testing.assert_array_equal(I1, np.asarray(jann.search(index, xq, 10, nprobe=1)[1]))


def test_filtered_search_equals_library(ivf, ivf_server, fmnist):
    index, _ = ivf
    xq = fmnist["queries"][:20]
    allowed = np.random.default_rng(0).choice(2000, 300, replace=False)
    with ivf_server.client() as client:
        for selector in (jann.IDSelectorBatch(allowed), jann.IDSelectorRange(100, 900)):
            D, I = client.search(xq, 10, selector=selector, nprobe=16)
            ref_d, ref_i = jann.search(index, xq, 10, selector=selector, nprobe=16)
            np.testing.assert_array_equal(I, np.asarray(ref_i))
            np.testing.assert_array_equal(D, np.asarray(ref_d))
        _, I = client.search(xq, 10, selector=allowed.tolist(), nprobe=16)
        assert np.isin(I, allowed).all()


# ------------------------------------------------------------------------ batching
@pytest.fixture(scope="module")
def batch_server(fmnist, tmp_path_factory):
    """A Flat server that waits (up to a minute) until 16 query rows are queued, so
    concurrent requests are batched deterministically."""
    path = tmp_path_factory.mktemp("batch") / "ckpt"
    index = _flat_checkpoint(fmnist["base"][:500], path)
    server = Server(path, "--max-batch", "16",
                    "--max-wait-ms", "60000", "--warm-k", "5")
    yield index, server
    server.stop()


def test_concurrent_requests_share_one_compiled_search(batch_server, fmnist):
    index, server = batch_server
    xq = fmnist["queries"][:16]
    before = server.client().stats()
    client = server.client()
    results = [None] * 16

    def one(i):
        results[i] = client.search(xq[i:i + 1], 5)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = client.stats()
    D = np.concatenate([r[0] for r in results])
    I = np.concatenate([r[1] for r in results])
    ref_d, ref_i = jann.search(index, xq, 5)
    assert_knn_equal(D, I, np.asarray(ref_d, np.float64), np.asarray(ref_i))
    batching = {key: after["batching"][key] - before["batching"][key]
                for key in ("batches", "requests", "queries")}
    assert batching == {"batches": 1, "requests": 16, "queries": 16}
    # Warmed at start: serving compiled nothing.
    assert after["compiled"]["request_compiles"] == before["compiled"]["request_compiles"]


def test_k_above_ntotal_pads_like_the_library(batch_server, fmnist):
    """Missing results come back as -1 / +inf through JSON (which has no infinity)."""
    index, server = batch_server
    xq = fmnist["queries"][100:116]                  # 16 rows: a full batch, no waiting
    D, I = server.client().search(xq, 600)
    ref_d, ref_i = jann.search(index, xq, 600)
    np.testing.assert_array_equal(I, np.asarray(ref_i))
    np.testing.assert_array_equal(D, np.asarray(ref_d))
    assert (I[:, 500:] == -1).all() and np.isposinf(D[:, 500:]).all()


def test_stats(ivf_server, fmnist):
    client = ivf_server.client()
    before = client.stats()
    assert before["index"] == {"description": "IVF16,Flat", "type": "IVFIndex", "d": 196,
                               "metric": "l2", "ntotal": 2000}
    assert before["compiled"]["buckets"] == [1, 4, 16, 64]  # IVF: single queries apart
    assert before["compiled"]["warm_params"] == {"nprobe": 4}
    # k=10 and nprobe 3..4 (one power-of-two bucket) were compiled at start ...
    client.search(fmnist["queries"][:30], 10, nprobe=3)
    client.search(fmnist["queries"][:1], 10, nprobe=4)
    warm = client.stats()
    assert warm["compiled"]["request_compiles"] == before["compiled"]["request_compiles"]
    # ... another k was not: the counter sees that compile.
    client.search(fmnist["queries"][:1], 7, nprobe=4)
    after = client.stats()
    assert after["compiled"]["request_compiles"] > warm["compiled"]["request_compiles"]
    assert after["requests"]["search"]["200"] == before["requests"].get(
        "search", {}).get("200", 0) + 3
    latency = after["latency"]["search"]
    assert latency["count"] >= 3 and 0 < latency["p50_ms"] <= latency["p99_ms"]
    assert after["batching"]["enabled"] and after["version"] == 0


def test_health_and_openapi(ivf_server):
    status, health = ivf_server.request("GET", "/health")
    assert status == 200 and health["status"] == "ok" and health["ntotal"] == 2000
    status, doc = ivf_server.request("GET", "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    assert {"/search", "/add", "/remove", "/snapshot", "/health", "/stats"} <= set(doc["paths"])
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert doc["paths"]["/add"]["post"]["security"] == [{"bearer": []}]
    assert "security" not in doc["paths"]["/search"]["post"]
    for ref in re.findall(r'"#/components/schemas/(\w+)"', json.dumps(doc)):
        assert ref in doc["components"]["schemas"]


# ---------------------------------------------------------------------- bad requests
def _query(d, n=1):
    return np.full((n, d), 0.5, np.float32).tolist()


BAD_SEARCHES = [
    # (raw body, status, words the message must contain)
    (b'{"vectors": [[1, 2', 400, "malformed JSON"),
    (b"[1, 2, 3]", 400, "JSON object"),
    (b"\xff\xfe", 400, "malformed JSON"),
    (json.dumps({"k": 5}).encode(), 422, "'vectors'"),
    (json.dumps({"vectors": _query(5), "k": 5}).encode(), 422, "dimension 5"),
    (json.dumps({"vectors": [[0.5] * 196, [0.5] * 195], "k": 5}).encode(), 422, "equal length"),
    (json.dumps({"vectors": [0.5] * 196, "k": 5}).encode(), 422, "list of rows"),
    (json.dumps({"vectors": [["a"] * 196], "k": 5}).encode(), 422, "numbers"),
    (b'{"vectors": [[NaN' + b", 0.5" * 195 + b']], "k": 5}', 422, "NaN"),
    (json.dumps({"vectors": _query(196), "k": 0}).encode(), 422, "k must be positive"),
    (json.dumps({"vectors": _query(196), "k": -3}).encode(), 422, "k must be positive"),
    (json.dumps({"vectors": _query(196), "k": 2.5}).encode(), 422, "positive integer"),
    (json.dumps({"vectors": _query(196), "k": "5"}).encode(), 422, "positive integer"),
    (json.dumps({"vectors": _query(196), "k": 101}).encode(), 422, "max_k=100"),
    (json.dumps({"vectors": _query(196, 101), "k": 5}).encode(), 422, "at most 100 queries"),
    (json.dumps({"vectors": _query(196), "params": {"nprobe": 0}}).encode(), 422, "nprobe"),
    (json.dumps({"vectors": _query(196), "params": {"bogus": 1}}).encode(), 422, "bogus"),
    (json.dumps({"vectors": _query(196), "params": [1]}).encode(), 422, "params"),
    (json.dumps({"vectors": _query(196), "params": {"k": 1}}).encode(), 422, "'k'"),
    (json.dumps({"vectors": _query(196), "filter": {"ids": [1.5]}}).encode(), 422, "integers"),
    (json.dumps({"vectors": _query(196), "filter": [1]}).encode(), 422, "filter"),
    (b'{"vectors": [' + b",".join([b"[" + b"0.5," * 195 + b"0.5]"] * 300) + b"]}", 413,
     "200000 bytes"),
]


@pytest.mark.parametrize("body,status,words", BAD_SEARCHES,
                         ids=[f"{i}-{s}" for i, (_, s, _) in enumerate(BAD_SEARCHES)])
def test_bad_search_is_4xx_with_a_clear_message(ivf_server, body, status, words):
    before = _version(ivf_server)
    got, answer = ivf_server.request("POST", "/search", raw=body)
    assert got == status, answer
    assert words in answer["error"]["message"], answer
    assert _version(ivf_server) == before


def test_bad_requests_leave_the_index_serving(ivf, ivf_server, fmnist):
    """After bad requests (and on the same keep-alive connection), results are unchanged."""
    index, _ = ivf
    client = ivf_server.client(token=TOKEN)
    xq = fmnist["queries"][:8]
    with pytest.raises(jann.InvalidInputError, match="dimension"):
        client.search(xq[:, :10], 5)
    with pytest.raises(jann.InvalidInputError, match="NaN"):
        client.search(np.where(np.eye(8, 196) > 0, np.nan, xq), 5)
    with pytest.raises(jann.InvalidInputError, match="dimension"):
        client.add(np.ones((3, 7), np.float32))
    with pytest.raises(jann.InvalidInputError, match="NaN"):
        client.add(np.full((2, 196), np.nan, np.float32))
    with pytest.raises(ServerError, match="413"):
        client.add(np.ones((300, 196), np.float32))
    status, answer = ivf_server.request("GET", "/nowhere")
    assert status == 404 and "/nowhere" in answer["error"]["message"]
    status, answer = ivf_server.request("GET", "/search")
    assert status == 405
    assert _version(ivf_server) == {"status": "ok", "version": 0, "ntotal": 2000}
    D, I = client.search(xq, 10, nprobe=4)
    ref_d, ref_i = jann.search(index, xq, 10, nprobe=4)
    np.testing.assert_array_equal(I, np.asarray(ref_i))


def test_writes_need_the_token(ivf_server, fmnist):
    x = fmnist["base"][:2].tolist()
    for token in (None, "wrong"):
        for path, body in (("/add", {"vectors": x}), ("/remove", {"ids": [1]}),
                           ("/snapshot", None)):
            status, answer = ivf_server.request("POST", path, body, token=token)
            assert status == 401, (path, answer)
            assert "Bearer" in answer["error"]["message"]
    with pytest.raises(ServerError, match="401"):
        ivf_server.client().remove([1])
    assert _version(ivf_server) == {"status": "ok", "version": 0, "ntotal": 2000}
    status, _ = ivf_server.request("POST", "/search", {"vectors": x, "k": 3})
    assert status == 200                                     # reads need no token


# ------------------------------------------------------------ writes and durability
def test_writes_swap_versions_atomically_and_survive_sigkill(fmnist, tmp_path):
    base = fmnist["base"][:500]
    batches = [fmnist["base"][1000 + 16 * j:1016 + 16 * j] for j in range(8)]
    expected = _flat_checkpoint(base, tmp_path / "ckpt")
    server = Server(tmp_path / "ckpt", "--max-batch", "16", "--warm-k", "1", "--warm-k", "5",
                    "--token", TOKEN, log=tmp_path / "a.log")
    # Row j is the first vector of batch j: present exactly when batch j is.
    queries = np.concatenate([np.stack([b[0] for b in batches]), fmnist["queries"][:8]])
    seen, done = [], threading.Event()

    def reader():
        while not done.is_set():
            seen.append(server.request("POST", "/search", {"vectors": queries.tolist(), "k": 1}))

    thread = threading.Thread(target=reader)
    thread.start()
    client = server.client(token=TOKEN)
    try:
        for j, batch in enumerate(batches):
            answer = client.add(batch)
            assert answer == {"added": 16, "first_id": 500 + 16 * j, "version": j + 1,
                              "ntotal": 500 + 16 * (j + 1), "durable": True}
            expected = jann.add(expected, batch)
    finally:
        done.set()
        thread.join()
    seen.append(server.request("POST", "/search", {"vectors": queries.tolist(), "k": 1}))
    # Each new index shape was compiled before its version went live.
    assert client.stats()["compiled"]["request_compiles"] == 0
    for status, answer in seen:
        assert status == 200, answer
        version, ids = answer["version"], np.asarray(answer["ids"])[:, 0]
        assert answer["ntotal"] == 500 + 16 * version          # one version, whole
        np.testing.assert_array_equal(ids[:version], 500 + 16 * np.arange(version))
        assert (ids[version:8] < 500 + 16 * version).all()    # no vector of a later batch
        assert (ids[8:] < 500 + 16 * version).all()
    assert seen[-1][1]["version"] == 8

    assert client.remove([0, 1, 2, 10_000]) == 3
    expected, _ = jann.remove_ids(expected, jann.IDSelectorBatch([0, 1, 2]))
    snap = client.snapshot()
    assert snap["ntotal"] == jann.ntotal(expected) == 500 + 128 - 3
    at_snapshot = expected
    expected = jann.add(expected, fmnist["base"][3000:3010])
    assert client.add(fmnist["base"][3000:3010])["durable"]   # acknowledged, after the snapshot
    server.kill()

    assert jann.ntotal(jann.load(tmp_path / "ckpt")) == jann.ntotal(at_snapshot)
    restarted = Server(tmp_path / "ckpt", "--max-batch", "16", "--warm-k", "5",
                       "--no-batching", log=tmp_path / "b.log")
    try:
        assert "1 logged writes" in restarted.output()
        xq = fmnist["queries"][:20]
        with restarted.client() as c:
            assert c.health()["ntotal"] == jann.ntotal(expected)
            results = [c.search(xq[i:i + 1], 5) for i in range(len(xq))]
            stats = c.stats()
        ref_d, ref_i = jann.search(expected, xq, 5)
        assert_knn_equal(np.concatenate([r[0] for r in results]),
                         np.concatenate([r[1] for r in results]),
                         np.asarray(ref_d, np.float64), np.asarray(ref_i))
        assert not stats["batching"]["enabled"]
        assert stats["batching"]["batches"] == stats["batching"]["requests"] == len(xq)
        assert stats["checkpoint"]["log_records"] == 1
        assert stats["compiled"]["request_compiles"] == 0
    finally:
        restarted.stop()


def test_sigkill_during_snapshot_keeps_every_acknowledged_write(fmnist, tmp_path):
    ckpt = tmp_path / "ckpt"
    expected = _flat_checkpoint(fmnist["base"][:300], ckpt)
    server = Server(ckpt, "--max-batch", "16", "--warm-k", "5", log=tmp_path / "a.log")
    added = fmnist["base"][300:316]
    assert server.client().add(added)["durable"]
    expected = jann.add(expected, added)
    # Send a snapshot and kill the server without waiting for the answer: the crash lands
    # before, during or after the save, and none of these may lose the add.
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port))
    conn.request("POST", "/snapshot", body=b"")
    server.kill()
    conn.close()
    # What a crash inside jann.save leaves, whatever the race gave: an unfinished version
    # directory, and (in the log) the torn start of a write that was never acknowledged.
    latest = (ckpt / "LATEST").read_text().strip()
    junk = ckpt / ".tmp-v000099-deadbeef" / "arrays"
    junk.mkdir(parents=True)
    (junk / "partial").write_bytes(b"\x00" * 100)
    with open(ckpt / f"wal-{latest}.log", "ab") as log:
        log.write(b"JWAL\x10\x00")

    restarted = Server(ckpt, "--max-batch", "16", "--warm-k", "5", log=tmp_path / "b.log")
    try:
        assert "incomplete record" in restarted.output()
        xq = fmnist["queries"][:10]
        client = restarted.client()
        assert client.health()["ntotal"] == 316
        D, I = client.search(xq, 5)
        ref_d, ref_i = jann.search(expected, xq, 5)
        assert_knn_equal(D, I, np.asarray(ref_d, np.float64), np.asarray(ref_i))
        # The restarted server keeps writing and snapshotting over the leftovers.
        more = fmnist["base"][400:404]
        assert client.add(more)["ntotal"] == 320
        assert client.snapshot()["ntotal"] == 320
    finally:
        restarted.stop()
    reloaded = jann.load(ckpt)
    assert jann.ntotal(reloaded) == 320
    np.testing.assert_array_equal(np.asarray(jann.reconstruct_n(reloaded, 300, 20)),
                                  np.concatenate([added, more]))
    assert not any(p.name.startswith(".tmp") for p in ckpt.iterdir())


# ---------------------------------------------------------------------------- command
def test_serve_command_line(ivf, ivf_server, capsys):
    from jann.cli import main

    assert main(["--help"]) == 0
    assert "serve" in capsys.readouterr().out
    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--host", "--port", "--token", "--max-body-bytes", "--no-batching"):
        assert flag in out
    assert main(["serve", str(ivf[1].parent / "missing"), "--port", "0"]) == 2
    assert "not a jann checkpoint" in capsys.readouterr().err
    # The checkpoint is locked by the running server: a second one refuses, cleanly.
    assert main(["serve", str(ivf[1]), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "another jann serve" in err and "Traceback" not in err
    assert main(["serve", str(ivf[1]), "--max-batch", "100"]) == 2
    assert "--max-batch" in capsys.readouterr().err


def test_missing_web_packages_name_the_extra(ivf, monkeypatch, capsys):
    from jann.cli import main

    for name in [m for m in sys.modules if m.partition(".")[0] == "starlette"] + ["starlette"]:
        monkeypatch.setitem(sys.modules, name, None)          # importing starlette fails
    monkeypatch.delitem(sys.modules, "jann.serve", raising=False)
    monkeypatch.delattr(jann, "serve", raising=False)
    assert main(["serve", str(ivf[1]), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'jann[serve]'" in err and "starlette" in err
    assert "Traceback" not in err


def test_client_refuses_what_the_server_cannot_take():
    client = Client("http://127.0.0.1:1")
    with pytest.raises(jann.InvalidInputError, match="2-D"):
        client.search(np.zeros(5, np.float32), 3)
    with pytest.raises(jann.InvalidInputError, match="IDSelectorRange"):
        client.search(np.zeros((1, 5), np.float32), 3, selector=~jann.IDSelectorRange(0, 3))
    with pytest.raises(jann.InvalidInputError, match="http://"):
        Client("https://example.org")


def test_write_log_survives_a_failed_append_and_a_corrupt_tail(tmp_path, monkeypatch):
    """A failed append (a full disk) leaves no torn bytes ahead of the next acknowledged
    record, and a tail of zero lengths or an unreadable header never stops a replay."""
    import errno
    import struct
    import zlib
    from jann.serve import write_log
    index = jann.add(jann.index_factory(4, "Flat"), np.zeros((2, 4), np.float32))
    rows = np.arange(12, dtype=np.float32).reshape(3, 4)
    log = write_log.WriteLog(str(tmp_path), "v000001")
    log.append("add", rows[:1], None)
    real_fsync = os.fsync

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(write_log.os, "fsync", full_disk)
    with pytest.raises(OSError):  # written, not made durable: refused, and cut off
        log.append("add", rows[1:2], None)
    monkeypatch.setattr(write_log.os, "fsync", real_fsync)
    log.append("add", rows[2:3], None)  # acknowledged after the failure
    with open(log.path, "ab") as f:  # then a tail no write ever made
        f.write(struct.pack("<4sIQI", b"JWAL", 0, 0, 0))  # zero lengths: crc32(b"") == 0
        body = b"{not json"
        f.write(struct.pack("<4sIQI", b"JWL2", len(body), 0, zlib.crc32(
            body, zlib.crc32(struct.pack("<IQ", len(body), 0)))) + body)
    log.close()
    replayed, records = write_log.WriteLog(str(tmp_path), "v000001").replay(index)
    assert records == 2
    np.testing.assert_array_equal(np.asarray(jann.reconstruct_n(replayed, 2, 2)),
                                  rows[[0, 2]])


def test_the_write_that_doubles_capacity_finds_its_programs_compiled(
        fmnist, tmp_path, compile_counter):
    """Once the index is GROW_AHEAD_FILL full, the next capacity's warm searches and adds
    of the batch sizes written compile in the background: the write that doubles the
    capacity compiles nothing (it used to compile them all, seconds with every write
    waiting), and serves the library's answers."""
    from jann.serve import service as service_module
    from jann.serve.config import ServeConfig
    from jann.serve.runner import load_service
    xb = fmnist["base"][:1000]
    index = jann.shrink_to_fit(jann.add(jann.index_factory(xb.shape[1], "Flat"), xb[:300]))
    jann.save(index, tmp_path / "ckpt")
    service, _ = load_service(ServeConfig(str(tmp_path / "ckpt"), max_batch=16))
    assert index.capacity == 512 and 300 >= service_module.GROW_AHEAD_FILL * 512
    service._write("add", xb[300:400], None)               # 400 rows: a size seen
    service._growing.result()
    service._write("add", xb[400:500], None)
    service._growing.result()                              # (the programs of 100 rows)
    compile_counter.count = 0
    answer = service._write("add", xb[500:600], None)      # 600 rows: capacity 1024
    assert compile_counter.count == 0
    grown = service.current.index
    assert grown.capacity == 1024 and answer["ntotal"] == 600
    want = jann.add(index, xb[300:600])
    for a, b in zip(jann.search(grown, xb[:5], 4), jann.search(want, xb[:5], 4)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    service._grow_pool.shutdown(wait=True)
