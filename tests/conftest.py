"""Shared fixtures. Recall-related tests use real data (the embedded Fashion-MNIST subset);
random vectors are used only where the test is about shapes or exact equality."""

import sys

import faiss
import jax
import numpy as np
import pytest

import jann
from jann import datasets


# faiss is an oracle here, not a competitor: one OpenMP thread keeps it from spinning
# against XLA's threads on small CI machines (calls were up to 15x slower otherwise).
faiss.omp_set_num_threads(1)


def pytest_collection_modifyitems(session, config, items):
    """The deviceless GPU / TPU compile check runs in worker processes started now, beside
    the other tests, and its tests (which wait for the workers) run last."""
    compile_check = [item for item in items if item.path.name == "test_gpu_compile.py"]
    if compile_check and not config.option.collectonly:
        items[:] = [item for item in items if item not in compile_check] + compile_check
        compile_check[0].module.start_in_background()


def pytest_sessionfinish(session, exitstatus):
    """Stop compile workers a stopped or failed-early session left running."""
    module = sys.modules.get("test_gpu_compile")
    if module is not None:
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
