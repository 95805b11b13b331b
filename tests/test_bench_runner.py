"""Smoke test of the benchmark runner (python -m benchmarks.run) on a tiny fvecs triple.

The runner runs in a subprocess, as a user runs it (it limits its own CPU affinity, which
must not leak into the test process). Ground truth in the files comes from the float64
oracle, so Flat's recall of 1.0 is a real check, not the runner agreeing with itself.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jann import datasets, io

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks` is a folder of the checkout, not installed
    sys.path.insert(0, str(ROOT))

HAVE_FAISS = importlib.util.find_spec("faiss") is not None


def _clustered(rng, n, d=24, centers=12):
    c = rng.normal(size=(centers, d)).astype(np.float32) * 4
    return (c[rng.integers(0, centers, n)] + rng.normal(size=(n, d))).astype(np.float32)


@pytest.fixture(scope="module")
def triple(tmp_path_factory):
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("tiny")
    xb, xq = _clustered(rng, 3000), _clustered(rng, 60)
    io.write_fvecs(folder / "base.fvecs", xb)
    io.write_fvecs(folder / "query.fvecs", xq)
    gt = datasets.exact_knn(xq, xb, 100)[1]
    io.write_ivecs(folder / "groundtruth.ivecs", gt)
    return folder, xb, xq, gt


def _run(args, tmp_path, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_runner_writes_json_markdown_and_plot(triple, tmp_path):
    folder = triple[0]
    out = tmp_path / "out"
    # A module that fails to import stands in for a peer that is not installed.
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "hnswlib.py").write_text("raise ImportError('blocked by the test')\n")
    methods = ["jann:Flat", "jann:IVF16,Flat", "hnswlib:M=8,efc=40"]
    if HAVE_FAISS:
        methods.append("faiss:IVF16,Flat")
    proc = _run(["--dataset", str(folder), "--methods", *methods, "--k", "10",
                 "--repeats", "1", "--threads", "2", "--out", str(out),
                 "--cache-dir", str(tmp_path / "cache")], tmp_path,
                {"PYTHONPATH": f"{blocker}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    stem = f"run_{folder.name}"
    for ext in ("json", "md", "png"):
        assert (out / f"{stem}.{ext}").stat().st_size > 0
    assert (out / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out / f"{stem}.json").read_text())
    assert results["threads"] == 2 and results["k"] == 10
    assert results["dataset"]["nb"] == 3000 and results["dataset"]["nq"] == 60
    assert results["dataset"]["gt_source"] == "from the dataset files"
    assert {"versions", "cpu_count", "date_utc"} <= set(results["machine"])
    assert list(results["methods"]) == methods

    flat = results["methods"]["jann:Flat"]
    assert flat["status"] == "ok" and flat["build"]["seconds"] > 0 and flat["index_bytes"] > 0
    (point,) = flat["result"]["points"]
    assert point["recall@1"] == point["recall@10"] == point["recall@100"] == 1.0
    assert point["qps"] > 0 and point["warmup_s"] > 0

    ivf = results["methods"]["jann:IVF16,Flat"]
    assert ivf["space"] == {"nprobe": [1, 2, 4, 8, 16]}
    measured = {p["params"]["nprobe"]: p for p in ivf["result"]["points"]}
    assert len(measured) + len(ivf["result"]["skipped"]) == 5
    assert measured[16]["recall@10"] == 1.0  # every list probed: exact
    frontier = ivf["result"]["frontier"]
    assert all(a["recall"] < b["recall"] and a["qps"] > b["qps"]
               for a, b in zip(frontier, frontier[1:]))

    missing = results["methods"]["hnswlib:M=8,efc=40"]
    assert missing["status"] == "missing" and "blocked by the test" in missing["reason"]
    md = (out / f"{stem}.md").read_text()
    assert "`jann:IVF16,Flat`" in md and "hnswlib:M=8,efc=40`: not run" in md
    if HAVE_FAISS:
        faiss_res = results["methods"]["faiss:IVF16,Flat"]
        assert faiss_res["status"] == "ok"
        assert max(p["recall"] for p in faiss_res["result"]["points"]) == 1.0
    assert "build jann:IVF16,Flat" in proc.stderr  # the progress lines go to stderr


def test_runner_rejects_bad_methods(triple, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--dataset", str(triple[0]),
                           "--methods", "annoy:trees=10", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "LIB:CONFIG" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--dataset", str(triple[0]),
                           "--methods", "jann:IVF16,Flatt", "--out", str(tmp_path),
                           "--cache-dir", str(tmp_path / "cache")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "Flatt" in proc.stderr
    assert not list(tmp_path.glob("run_*"))


def test_ground_truth_is_exact_and_cached(triple, tmp_path, monkeypatch):
    import jann
    from benchmarks import _common, run

    _, xb, xq, gt = triple
    progress = _common.Progress()
    ids, source = run.cached_ground_truth(xb, xq, 100, "l2", tmp_path, progress)
    assert "computed" in source
    assert [p.name for p in tmp_path.iterdir()] == [Path(source.split()[-1]).name]
    # float32 search against the float64 oracle: the same neighbour sets
    assert np.mean([len(set(a) & set(b)) for a, b in zip(ids[:, :10], gt[:, :10])]) == 10

    def fail(*a, **k):
        raise AssertionError("ground truth recomputed instead of read from the cache")

    monkeypatch.setattr(jann, "knn", fail)
    again, source = run.cached_ground_truth(xb, xq, 100, "l2", tmp_path, progress)
    assert "cached" in source and np.array_equal(again, ids)
    with pytest.raises(AssertionError, match="recomputed"):  # other data: not a cache hit
        run.cached_ground_truth(xb[:-1], xq, 100, "l2", tmp_path, progress)


def test_method_and_param_parsing():
    from benchmarks import run

    m = run.parse_method("jann:IVF1024,PQ56,RFlat")
    assert (m.library, m.config) == ("jann", "IVF1024,PQ56,RFlat")
    assert run.HnswlibMethod.parse_config("M=32,efc=200") == (32, 200)
    for bad in ("IVF1024,Flat", "jann:", "hnswlib:M=x", "hnswlib:ef=3"):
        with pytest.raises(ValueError):
            run.parse_method(bad)
    params = run.parse_params(["nprobe=1,4,16", "k_factor=2.5"])
    assert params == {"nprobe": (1, 4, 16), "k_factor": (2.5,)}
    with pytest.raises(ValueError):
        run.parse_params(["nprobe"])
    space = {"nprobe": (1, 2), "k_factor_rf": (1, 2, 4)}
    assert run.restrict(space, {"k_factor": (8,)}) == {"nprobe": (1, 2), "k_factor_rf": (8,)}
    assert run.restrict(space, {"nprobe": (2, 64)})["nprobe"] == (2,)  # beyond nlist: dropped
    assert run.restrict({}, {"nprobe": (2,)}) == {}  # methods without the knob are untouched
