"""Shared fixtures. Recall-related tests use real data (the embedded Fashion-MNIST subset);
random vectors are used only where the test is about shapes or exact equality."""

import os
import sys
import tempfile
from pathlib import Path

import faiss
import jax
import numpy as np
import pytest

import jann
from jann import datasets


# faiss is an oracle here, not a competitor: one OpenMP thread keeps it from spinning
# against XLA's threads on small CI machines (calls were up to 15x slower otherwise).
faiss.omp_set_num_threads(1)


def _persistent_compile_cache():
    """Compiled programs kept on disk between runs (and shared with the subprocesses
    tests start, through the environment): about 70% of the suite's time is XLA
    compiling, and a second run of the same tests loads instead (5 modules: 62.6 s cold,
    19.7 s warm). Folder: JANN_TEST_COMPILE_CACHE, default ~/.cache/jann/xla-tests/<jax
    version>; "off" disables it (a first run on a fresh machine is what CI pays)."""
    folder = os.environ.get("JANN_TEST_COMPILE_CACHE") or str(
        Path.home() / ".cache" / "jann" / "xla-tests" / jax.__version__)
    if folder == "off":
        return
    os.environ.update(JANN_TEST_COMPILE_CACHE=folder, JAX_COMPILATION_CACHE_DIR=folder,
                      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


_persistent_compile_cache()


COMPILE_CHECK = Path(__file__).with_name("test_gpu_compile.py")


def _runs_compile_check(config) -> bool:
    """Whether this session selects the compile check, judged from its arguments alone
    (an xdist controller collects nothing): a -k / -m selection leaves it to the test."""
    if config.option.collectonly or config.option.keyword or config.option.markexpr:
        return False
    paths = [Path(str(a).split("::")[0]).resolve() for a in config.args] or \
        [Path(config.rootpath, p).resolve() for p in config.getini("testpaths")]
    return any(p == COMPILE_CHECK or p in COMPILE_CHECK.parents for p in paths)


def pytest_configure(config):
    """The deviceless GPU / TPU compile check runs in worker processes started now, by
    the process that runs the session (not by each xdist worker), beside the other
    tests; its tests wait for the results."""
    if not hasattr(config, "workerinput") and _runs_compile_check(config):
        import test_gpu_compile
        folder = Path(tempfile.mkdtemp(prefix="jann-compile-check-"))
        test_gpu_compile.start_in_background(folder)


def pytest_collection_modifyitems(session, config, items):
    """The compile check's tests, which wait for its results, run last."""
    compile_check = [item for item in items if item.path == COMPILE_CHECK]
    items[:] = [item for item in items if item not in compile_check] + compile_check


def pytest_unconfigure(config):
    """Stop compile workers a stopped or failed-early session left running."""
    module = sys.modules.get("test_gpu_compile")
    if module is not None and not hasattr(config, "workerinput"):
        module.stop_background()


@pytest.fixture(scope="module", autouse=True)
def _fresh_jax_caches():
    """Drop compiled programs after each test module. One process runs ~600 tests; with
    every executable kept alive, XLA's CPU compiler once crashed (SIGSEGV) late in the
    run on a test that passes alone, so no module inherits the others' compiled state."""
    yield
    jax.clear_caches()


@pytest.fixture(scope="session")
def fmnist():
    """Embedded real data: 20000 x 196 base, 1000 queries (float32)."""
    return datasets.load_embedded()


@pytest.fixture
def rng():
    return np.random.default_rng(0)


class CompileCounter:
    """Counts XLA backend compilations while active (a recompilation detector)."""

    def __init__(self):
        self.count = 0

    def __call__(self, event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            self.count += 1


@pytest.fixture
def compile_counter():
    counter = CompileCounter()
    jax.monitoring.register_event_duration_secs_listener(counter)
    yield counter
    jax.monitoring.unregister_event_duration_listener(counter)


def assert_knn_equal(D, I, ref_d, ref_i, rtol=1e-4, atol=1e-4):
    """Distances equal the oracle's; ids equal it wherever the distance is not tied."""
    D, I = np.asarray(D, np.float64), np.asarray(I)
    np.testing.assert_allclose(D, ref_d, rtol=rtol, atol=atol)
    for row in range(I.shape[0]):
        for col in range(I.shape[1]):
            if I[row, col] != ref_i[row, col]:
                tied = np.isclose(ref_d[row], ref_d[row, col], rtol=rtol, atol=atol)
                assert tied.sum() > 1 or np.isinf(ref_d[row, col]), (
                    f"row {row} col {col}: id {I[row, col]} != {ref_i[row, col]} "
                    f"at untied distance {ref_d[row, col]}")


def flat(d, description="Flat", metric="l2", **kw):
    return jann.index_factory(d, description, metric=metric, **kw)


# Codec tests: jann's held-out reconstruction error may exceed faiss's by at most 5%.
MSE_TOLERANCE = 1.05


def mse(x, y) -> float:
    """Mean squared reconstruction error per vector, in float64."""
    return float(((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2).sum(1).mean())


@pytest.fixture(scope="module")
def data(fmnist):
    """Codec train / held-out test / query split of the embedded real data."""
    return {"train": fmnist["base"][:5000], "test": fmnist["base"][10000:12000],
            "queries": fmnist["queries"][:50]}
