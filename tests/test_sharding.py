"""Sharding over devices and hosts (jann.sharding), run where jax can see several devices.

jax fixes its device count when it starts, so the cases run in subprocesses:
- tests/_sharding_cases.py under pytest with 8 simulated CPU devices
  (XLA_FLAGS=--xla_force_host_platform_device_count=8): sharded and replicated Flat /
  IVF-Flat / IVF-PQ against the unsharded index, a graph as one sub-graph per device,
  uneven sizes, k above a shard's size,
  emptied shards, checkpoints across mesh sizes, recompilation, bad input;
- the same file's int32-ids case again with JAX_ENABLE_X64=1 (int64 ids by default);
- tests/_sharding_multihost.py as 2 processes of one jax.distributed job (loopback
  coordinator, 4 CPU devices each), checked here against one process with all the data.
All are started by a fixture before any test waits, so they overlap (each pytest in one
process: the suite's `-n 2` would start idle workers there).
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import jann

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 600


def _env(devices: int, **extra) -> dict:
    env = {**os.environ, **extra}
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        f" --xla_force_host_platform_device_count={devices}").strip()
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    out = tmp_path_factory.mktemp("multihost")
    port = str(_free_port())
    procs = {
        "cases": subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0",
             "-o", "python_files=_sharding_cases.py", "tests/_sharding_cases.py"],
            cwd=ROOT, env=_env(8), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True),
        "x64": subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0",
             "-o", "python_files=_sharding_cases.py", "tests/_sharding_cases.py",
             "-k", "int32_ids"],
            cwd=ROOT, env=_env(8, JAX_ENABLE_X64="1"), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True),
        **{f"process{i}": subprocess.Popen(
            [sys.executable, "tests/_sharding_multihost.py", str(i), port, str(out)],
            cwd=ROOT, env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True) for i in (0, 1)},
    }
    yield procs, out
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _finish(proc) -> tuple[int, str]:
    try:
        output, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        return -1, f"timed out after {TIMEOUT_S} s\n{output}"
    return proc.returncode, output


def test_sharding_cases_on_8_devices(jobs):
    code, output = _finish(jobs[0]["cases"])
    assert code == 0, f"tests/_sharding_cases.py failed (exit {code}):\n{output[-12000:]}"
    assert " passed" in output and "no tests ran" not in output


def test_int32_ids_under_x64(jobs):
    code, output = _finish(jobs[0]["x64"])
    assert code == 0 and "1 passed" in output, f"the x64 case failed (exit {code}):\n" \
        f"{output[-8000:]}"


def test_two_processes_search_like_one_with_all_the_data(jobs):
    procs, out = jobs
    for name in ("process0", "process1"):
        code, output = _finish(procs[name])
        assert code == 0, f"{name} of the 2-process job failed (exit {code}):\n{output[-8000:]}"
    results = [np.load(out / f"p{i}.npz") for i in (0, 1)]
    xb, xq, k = results[0]["xb"], results[0]["xq"], int(results[0]["k"])
    flat = jann.add(jann.index_factory(xb.shape[1], "Flat"), xb)
    flat_d, flat_i = (np.asarray(a) for a in jann.search(flat, xq, k))
    ivf = jann.train(jann.index_factory(xb.shape[1], "IVF8,Flat"), xb[:400],
                     key=jax.random.key(0))
    ivf_d, ivf_i = (np.asarray(a) for a in jann.search(jann.add(ivf, xb), xq, k, nprobe=3))
    km = jann.kmeans(xb, 8, key=jax.random.key(1), niter=5)
    for r in results:  # each process got the global answer
        assert int(r["ntotal"]) == xb.shape[0]
        np.testing.assert_array_equal(r["flat_i"], flat_i)
        np.testing.assert_array_equal(r["flat_d"], flat_d)
        np.testing.assert_array_equal(r["ivf_i"], ivf_i)
        np.testing.assert_allclose(r["ivf_d"], ivf_d, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(r["centroids"], np.asarray(km.centroids), rtol=1e-4,
                                   atol=1e-4)
    # The checkpoint the two processes wrote together, read back by one.
    loaded = jann.load(out / "ckpt")
    assert isinstance(loaded, jann.FlatIndex) and jann.ntotal(loaded) == xb.shape[0]
    got_d, got_i = jann.search(loaded, xq, k)
    np.testing.assert_array_equal(np.asarray(got_i), flat_i)
    np.testing.assert_array_equal(np.asarray(got_d), flat_d)
