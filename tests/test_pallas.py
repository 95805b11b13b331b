"""Pallas kernels (`pallas.py` of each op folder of jann.ops) and the backend choice,
without a GPU.

Each kernel runs in interpret mode against its pure-jnp oracle over ragged shapes, k = 1,
k > tile, k > the kernel's buffer (multi-pass) and k > n, every storage dtype and metric;
small `ScanConfig`s make those cases cheap. The CUDA lowering tests export each kernel for
CUDA on this CPU machine (`jax.export`, platforms=["cuda"]) and check the Triton custom call
is in the module. They need no CUDA package and never skip: with jaxlib 0.10.2 the Pallas
Triton lowering is pure Python in jaxlib (it serialises the Triton IR into a
`__gpu$xla.gpu.triton` call) and the module is byte-identical with or without
`jax-cuda12-plugin` installed, so the plugin, which makes every `import jax` print CUDA
stub messages on a CPU machine, stays out of the test environment.
"""

import functools
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jann
from jann.ops import dispatch
from jann.ops.adc import adc_top_k_pallas, adc_top_k_reference, adc_top_k_xla
from jann.ops.errors import InvalidInputError
from jann.ops.hamming import knn_hamming_pallas, knn_hamming_reference
from jann.ops.ivf_scan import KernelDecode, ivf_scan_pallas, ivf_scan_reference
from jann.ops.knn import knn_pallas, knn_reference
from jann.ops.topk import ScanConfig
from jann.quantizers.pq import adc_lookup, pack_codes, unpack_codes

from conftest import assert_knn_equal

ROOT = Path(__file__).resolve().parents[1]
# Tiles of 16 rows and a buffer of 8: k = 20 is both k > tile and three kernel passes;
# d in chunks of 16 (d = 33: three chunks, the last one ragged).
SMALL = ScanConfig(block_q=16, block_n=16, block_d=16, max_k=8)
TRITON_CALL = "__gpu$xla.gpu.triton"


def _oracle_top_k(scores, k, largest):
    """lax.top_k over a full score matrix, padded FAISS-style past n."""
    scores = np.asarray(scores, np.float64)
    keyed = -scores if largest else scores
    order = np.argsort(keyed, axis=1, kind="stable")[:, :k]
    d = np.take_along_axis(scores, order, 1)
    pad = k - order.shape[1]
    fill = -np.inf if largest else np.inf
    return (np.pad(d, ((0, 0), (0, pad)), constant_values=fill),
            np.pad(order, ((0, 0), (0, pad)), constant_values=-1))


# --- fused distance + top-k -----------------------------------------------------------
KNN_CASES = [  # nq, n, d, k, metric, dtype
    (5, 37, 12, 1, "l2", jnp.float32),      # k = 1, ragged tail, d not a power of two
    (17, 50, 16, 20, "ip", jnp.float16),    # k > tile, k > max_k (3 passes), ragged nq
    (3, 10, 8, 25, "l2", jnp.bfloat16),     # k > n
    (20, 64, 33, 8, "l2", jnp.float16),     # exact tiles, k = max_k
    (4, 40, 3, 5, "ip", jnp.bfloat16),      # d < 16 (padded query side only)
]


@pytest.mark.parametrize("nq,n,d,k,metric,dtype", KNN_CASES)
def test_knn_kernel_matches_reference(nq, n, d, k, metric, dtype, rng):
    xq = rng.normal(size=(nq, d)).astype(np.float32)
    xb = jnp.asarray(rng.normal(size=(n, d)), dtype)
    D, I = jax.jit(lambda q, b: knn_pallas(q, b, k, metric, config=SMALL, interpret=True))(
        xq, xb)
    ref_d, ref_i = knn_reference(xq, np.asarray(xb.astype(jnp.float32)), k, metric)
    assert D.shape == I.shape == (nq, k) and D.dtype == jnp.float32 and I.dtype == jnp.int32
    assert_knn_equal(D, I, np.asarray(ref_d, np.float64), np.asarray(ref_i))


def test_knn_kernel_valid_mask_and_cached_norms(rng):
    xq = rng.normal(size=(6, 10)).astype(np.float32)
    xb = rng.normal(size=(45, 10)).astype(np.float32)
    valid = rng.random(45) < 0.5
    norms = jnp.sum(jnp.asarray(xb) ** 2, axis=1)
    D, I = knn_pallas(jnp.asarray(xq), jnp.asarray(xb), 30, "l2", xb_sqnorms=norms,
                      xb_valid=jnp.asarray(valid), config=SMALL, interpret=True)
    ref_d, ref_i = knn_reference(xq, xb[valid], 30, "l2")
    kept = np.flatnonzero(valid)
    ref_i = np.where(np.asarray(ref_i) >= 0, kept[np.maximum(np.asarray(ref_i), 0)], -1)
    assert_knn_equal(D, I, np.asarray(ref_d, np.float64), ref_i)
    assert (np.asarray(I)[:, valid.sum():] == -1).all()


def test_knn_kernel_ties_break_by_lower_row():
    xb = np.zeros((40, 4), np.float32)   # every row at the same distance
    D, I = knn_pallas(jnp.ones((2, 4)), jnp.asarray(xb), 12, "l2", config=SMALL,
                      interpret=True)
    np.testing.assert_array_equal(np.asarray(I), np.tile(np.arange(12), (2, 1)))
    np.testing.assert_allclose(np.asarray(D), 4.0)


# --- Hamming ------------------------------------------------------------------------------
@pytest.mark.parametrize("nq,n,nbytes,k", [(5, 70, 7, 1), (18, 33, 8, 20), (3, 9, 16, 12)])
def test_hamming_kernel_matches_reference(nq, n, nbytes, k, rng):
    a = rng.integers(0, 256, (nq, nbytes), dtype=np.uint8)
    b = rng.integers(0, 256, (n, nbytes), dtype=np.uint8)
    b[1] = b[0]                                          # a guaranteed tie
    valid = rng.random(n) < 0.8
    config = ScanConfig(block_q=8, block_n=16, max_k=8)
    D, I = jax.jit(lambda a, b, v: knn_hamming_pallas(a, b, k, xb_valid=v, config=config,
                                                      interpret=True))(a, b, valid)
    ref_d, ref_i = knn_hamming_reference(a, b, k, xb_valid=valid)
    np.testing.assert_array_equal(np.asarray(D), np.asarray(ref_d))
    np.testing.assert_array_equal(np.asarray(I), np.asarray(ref_i))


# --- PQ / ADC -----------------------------------------------------------------------------
ADC_CASES = [  # nq, n, M, nbits, k, metric
    (5, 70, 8, 8, 1, "l2"),
    (17, 40, 5, 4, 20, "ip"),       # odd M: a half-used last nibble byte
    (3, 21, 6, 2, 30, "l2"),        # k > n, 2-bit codes in nibbles
]


@pytest.mark.parametrize("nq,n,M,nbits,k,metric", ADC_CASES)
def test_adc_kernels_match_lookup_oracle(nq, n, M, nbits, k, metric, rng):
    tables = jnp.asarray(rng.random((nq, M, 1 << nbits), dtype=np.float32))
    codes = pack_codes(jnp.asarray(rng.integers(0, 1 << nbits, (n, M))), nbits)
    valid = jnp.asarray(rng.random(n) < 0.9)
    scores = np.where(np.asarray(valid)[None, :],
                      np.asarray(adc_lookup(tables, unpack_codes(codes, M, nbits))),
                      -np.inf if metric == "ip" else np.inf)
    ref_d, ref_i = _oracle_top_k(scores, k, metric == "ip")
    ref_i = np.where(np.isinf(ref_d), -1, ref_i)
    got = {
        "pallas": jax.jit(lambda t, c, v: adc_top_k_pallas(
            t, c, k, nbits, metric, xb_valid=v, config=SMALL, interpret=True))(
                tables, codes, valid),
        "xla": adc_top_k_xla(tables, codes, k, nbits, metric, xb_valid=valid),
        "reference": adc_top_k_reference(tables, codes, k, nbits, metric, xb_valid=valid),
    }
    for D, I in got.values():
        assert_knn_equal(D, I, ref_d, ref_i)


# --- IVF list scan ------------------------------------------------------------------------
IVF_SMALL = ScanConfig(block_q=1, block_n=16, block_d=8, max_k=8)
IVF_CASES = [  # nlist, nq, nprobe, d, k, metric, decode, by_residual
    (6, 5, 3, 12, 1, "l2", "float", True),      # k = 1, d not a power of two
    (5, 7, 4, 16, 20, "ip", "sq8", True),       # k > tile, k > max_k (3 passes)
    (4, 3, 2, 8, 90, "l2", "direct", False),    # k > the probed rows
    (7, 4, 7, 5, 9, "ip", "float", False),      # every list probed, some empty
]


def _ivf_storage(rng, nlist, d, decode):
    sizes = rng.integers(0, 40, nlist)
    sizes[1] = 0                                          # an empty list
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
    n = int(offsets[-1]) + 5                              # spare capacity past the count
    if decode == "float":
        payload = rng.normal(size=(n, d)).astype(np.float32)
    else:
        payload = rng.integers(0, 256, (n, d), dtype=np.uint8)
    return offsets, payload


@pytest.mark.parametrize("nlist,nq,nprobe,d,k,metric,decode,by_residual", IVF_CASES)
def test_ivf_scan_kernel_matches_reference(nlist, nq, nprobe, d, k, metric, decode,
                                           by_residual, rng):
    offsets, payload = _ivf_storage(rng, nlist, d, decode)
    n = payload.shape[0]
    q = rng.normal(size=(nq, d)).astype(np.float32)
    centroids = rng.normal(size=(nlist, d)).astype(np.float32)
    lists = np.stack([rng.permutation(nlist)[:nprobe] for _ in range(nq)]).astype(np.int32)
    lists[0, -1] = nlist                                  # an unused probe
    bias = np.where(rng.random(n) < 0.9, rng.random(n), np.inf).astype(np.float32)
    ranges = ({"vmin": jnp.asarray(rng.normal(size=d), jnp.float32),
               "vdiff": jnp.asarray(rng.random(d) + 0.1, jnp.float32)}
              if decode == "sq8" else {})
    args = tuple(map(jnp.asarray, (q, lists, offsets, payload, bias, centroids)))
    kw = dict(by_residual=by_residual, decode=decode, **ranges)
    D, I = jax.jit(lambda *a: ivf_scan_pallas(*a, k, metric, config=IVF_SMALL,
                                              interpret=True, **kw))(*args)
    ref_d, ref_i = ivf_scan_reference(*args, k, metric, **kw)
    assert D.shape == I.shape == (nq, k) and I.dtype == jnp.int32
    assert_knn_equal(D, I, np.asarray(ref_d, np.float64), np.asarray(ref_i), rtol=1e-5)


@pytest.mark.parametrize("nq,nprobe,M,nbits,k,metric,with_list_tables", [
    (5, 3, 6, 8, 4, "l2", True),       # l2 by residual: per-query and per-list tables
    (7, 4, 5, 4, 20, "ip", False),     # 4-bit nibbles, odd M, k > max_k (3 passes)
    (3, 2, 8, 8, 90, "l2", False),     # k > the probed rows
])
def test_ivf_pq_kernel_matches_reference(nq, nprobe, M, nbits, k, metric, with_list_tables,
                                         rng):
    """The "pq" decode scores rows by look-up tables (ADC): the kernel equals the sum of
    table entries over every row, masked to the probed lists, then top_k."""
    from jann.quantizers.pq import pack_codes
    nlist, d, ksub = 6, 12, 1 << nbits
    offsets, _ = _ivf_storage(rng, nlist, d, "float")
    n = int(offsets[-1]) + 5
    payload = pack_codes(jnp.asarray(rng.integers(0, ksub, (n, M))), nbits)
    q = rng.normal(size=(nq, d)).astype(np.float32)
    centroids = rng.normal(size=(nlist, d)).astype(np.float32)
    lists = np.stack([rng.permutation(nlist)[:nprobe] for _ in range(nq)]).astype(np.int32)
    lists[0, -1] = nlist                                  # an unused probe
    bias = np.where(rng.random(n) < 0.9, rng.random(n), np.inf).astype(np.float32)
    kw = dict(by_residual=True, decode="pq", nbits=nbits,
              tables=jnp.asarray(rng.normal(size=(nq, M, ksub)), jnp.float32),
              list_tables=(jnp.asarray(rng.normal(size=(nlist, M, ksub)), jnp.float32)
                           if with_list_tables else None))
    args = tuple(map(jnp.asarray, (q, lists, offsets, payload, bias, centroids)))
    D, I = jax.jit(lambda *a: ivf_scan_pallas(*a, k, metric, config=IVF_SMALL,
                                              interpret=True, **kw))(*args)
    ref_d, ref_i = ivf_scan_reference(*args, k, metric, **kw)
    assert D.shape == I.shape == (nq, k)
    assert_knn_equal(D, I, np.asarray(ref_d, np.float64), np.asarray(ref_i), rtol=1e-5)


@pytest.mark.parametrize("description,metric", [("IVF8,Flat", "l2"), ("IVF8,SQ8", "ip"),
                                                ("IVF8,SQ8_direct", "l2"),
                                                ("IVF8,Flat", "cosine"), ("IVF8,PQ4", "l2"),
                                                ("IVF8,PQ6x4", "ip")])
def test_ivf_search_core_on_the_kernel_equals_xla(description, metric, rng):
    """IVFIndex.search_core(backend="pallas") (the kernel in interpret mode) returns the
    list-major XLA scan's results, selector included; other codecs stay on XLA."""
    xb = (rng.normal(size=(300, 12)) * 3).astype(np.float32)
    xq = jnp.asarray(rng.normal(size=(9, 12)).astype(np.float32) * 3)
    index = jann.train(jann.index_factory(12, description, metric=metric), xb,
                       key=jax.random.key(0))
    index = jann.add(index, xb)
    selector = jann.IDSelectorRange(20, 250)
    params = dict(nprobe_bucket=4, nprobe=jnp.int32(3))
    for sel in (None, selector):
        want = jax.jit(lambda ix, q, s=sel: ix.search_core(q, 7, s, backend="xla",
                                                             **params))(index, xq)
        got = jax.jit(lambda ix, q, s=sel: ix.search_core(q, 7, s, backend="pallas",
                                                            **params))(index, xq)
        assert_knn_equal(got[0], got[1], np.asarray(want[0], np.float64), np.asarray(want[1]),
                         rtol=1e-5)
    rq = jann.add(jann.train(jann.index_factory(12, "IVF8,RQ2x4"), xb, key=jax.random.key(0)),
                  xb)
    jaxpr = str(jax.make_jaxpr(lambda ix, q: ix.search_core(q, 5, backend="pallas"))(rq, xq))
    assert "pallas_call" not in jaxpr


def test_codecs_describe_their_kernel_decode():
    """Each codec says how the IVF kernel reads its codes (None: no kernel)."""
    xb = np.random.default_rng(0).normal(size=(300, 12)).astype(np.float32)
    kinds = {}
    for spec in ("Flat", "SQ8", "SQ8_uniform", "SQ8_direct", "SQ4", "SQfp16", "PQ4", "RQ2x4"):
        codec = jann.train(jann.index_factory(12, f"IVF2,{spec}"), xb,
                           key=jax.random.key(0)).codec
        decode = codec.kernel_decode()
        kinds[spec] = None if decode is None else decode.kind
    assert kinds == {"Flat": "float", "SQ8": "sq8", "SQ8_uniform": "sq8",
                     "SQ8_direct": "direct", "SQ4": None, "SQfp16": None, "PQ4": "pq",
                     "RQ2x4": None}


def test_kernel_wrappers_raise_jann_errors():
    x = jnp.zeros((4, 8))
    with pytest.raises(InvalidInputError, match="knn_pallas supports"):
        knn_pallas(x, x, 2, "l1", interpret=True)
    with pytest.raises(InvalidInputError, match="power of two"):
        ScanConfig(block_q=12)
    tables, codes = jnp.zeros((2, 4, 16)), jnp.zeros((5, 2), jnp.uint8)
    for fn in (adc_top_k_pallas, adc_top_k_xla, adc_top_k_reference):
        with pytest.raises(InvalidInputError, match="'l2' and 'ip'"):
            fn(tables, codes, 2, 4, "l1")
        with pytest.raises(InvalidInputError, match="entries per sub-space"):
            fn(tables, codes, 2, 8)
    lists, offsets = jnp.zeros((4, 1), jnp.int32), jnp.array([0, 4], jnp.int32)
    args = (x, lists, offsets, x, jnp.zeros(4), x[:1])
    with pytest.raises(InvalidInputError, match="supports"):
        ivf_scan_pallas(*args, 2, "cosine", by_residual=False)
    with pytest.raises(InvalidInputError, match="decode must be one of"):
        ivf_scan_pallas(*args, 2, "l2", by_residual=False, decode="sq4")
    with pytest.raises(InvalidInputError, match="decode must be one of"):
        KernelDecode("sq4")
    with pytest.raises(jann.JannError):
        jann.ops.smallest_k(x, 9)


# --- dispatcher ---------------------------------------------------------------------------
def test_backend_is_validated():
    x = np.zeros((2, 4), np.float32)
    with pytest.raises(jann.JannError, match="backend"):
        jann.ops.knn(x, x, 1, backend="triton")


def test_auto_is_xla_until_measured():
    """No GPU measurement exists, so "auto" must not reach a Pallas kernel anywhere."""
    assert dispatch.MEASURED_FASTER == frozenset()
    x = jnp.zeros((4, 8))
    for backend, has_kernel in (("auto", False), ("xla", False), ("pallas", True)):
        search = functools.partial(dispatch.knn_search, k=2, metric="l2", backend=backend)
        jaxpr = str(jax.make_jaxpr(lambda a, search=search: search(a, a))(x))
        assert ("pallas_call" in jaxpr) == has_kernel, backend


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine", "l1"])
def test_knn_backends_agree(metric, rng):
    xq = rng.normal(size=(9, 12)).astype(np.float32)
    xb = rng.normal(size=(70, 12)).astype(np.float32)
    ref_d, ref_i = jann.ops.knn_reference(xq, xb, 6, metric)
    for backend in dispatch.BACKENDS:
        D, I = jann.ops.knn(xq, xb, 6, metric, backend=backend)
        assert_knn_equal(D, I, np.asarray(ref_d, np.float64), np.asarray(ref_i))


def test_flat_search_core_on_the_kernel(rng):
    xb = rng.normal(size=(50, 8)).astype(np.float32)
    xq = jnp.asarray(rng.normal(size=(4, 8)).astype(np.float32))
    index = jann.add(jann.index_factory(8, "Flat(float16)"), xb)
    want_d, want_i = jann.search(index, xq, 5)
    D, I = jax.jit(lambda ix, q: ix.search_core(q, 5, backend="pallas"))(index, xq)
    assert_knn_equal(D, I, np.asarray(want_d, np.float64), np.asarray(want_i))


def test_hamming_and_adc_dispatch_agree(rng):
    a = rng.integers(0, 256, (3, 6), dtype=np.uint8)
    b = rng.integers(0, 256, (30, 6), dtype=np.uint8)
    results = [dispatch.hamming_search(a, b, 4, backend=bk) for bk in dispatch.BACKENDS]
    for D, I in results[1:]:
        np.testing.assert_array_equal(np.asarray(D), np.asarray(results[0][0]))
        np.testing.assert_array_equal(np.asarray(I), np.asarray(results[0][1]))
    tables = jnp.asarray(rng.random((3, 4, 16), dtype=np.float32))
    codes = pack_codes(jnp.asarray(rng.integers(0, 16, (30, 4))), 4)
    results = [dispatch.adc_search(tables, codes, 4, 4, backend=bk) for bk in dispatch.BACKENDS]
    for D, I in results[1:]:
        np.testing.assert_allclose(np.asarray(D), np.asarray(results[0][0]), rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(I), np.asarray(results[0][1]))


# --- CUDA lowering on CPU -----------------------------------------------------------------
def _cuda_module_text(fn, *shapes):
    from jax import export
    exported = export.export(
        jax.jit(fn), platforms=["cuda"],
        disabled_checks=[export.DisabledSafetyCheck.custom_call(TRITON_CALL)])(*shapes)
    return exported.mlir_module()


def _s(shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype)


LOWERINGS = {
    "knn_l2_f32": (lambda q, b: knn_pallas(q, b, 10, "l2"), _s((100, 96)), _s((1000, 96))),
    "knn_ip_f16": (lambda q, b: knn_pallas(q, b, 10, "ip"),
                   _s((64, 128)), _s((999, 128), jnp.float16)),
    "knn_l2_bf16_multipass": (lambda q, b: knn_pallas(q, b, 300, "l2"),
                              _s((16, 64)), _s((2000, 64), jnp.bfloat16)),
    "hamming": (lambda a, b: knn_hamming_pallas(a, b, 10),
                _s((50, 12), jnp.uint8), _s((777, 12), jnp.uint8)),
    "adc_pq8": (lambda t, c: adc_top_k_pallas(t, c, 10, 8),
                _s((40, 16, 256)), _s((500, 16), jnp.uint8)),
    "adc_pq4": (lambda t, c: adc_top_k_pallas(t, c, 10, 4, "ip"),
                _s((40, 32, 16)), _s((500, 16), jnp.uint8)),
    "ops_knn_pallas": (lambda q, b: jann.ops.knn(q, b, 10, "cosine", backend="pallas"),
                       _s((32, 96)), _s((1000, 96))),
    "ivf_flat_l2": (lambda q, lists, off, x, bias, c: _ivf_kernel(
        q, lists, off, x, bias, c, 10, "l2", by_residual=False),
        _s((64, 96)), _s((64, 8), jnp.int32), _s((257,), jnp.int32), _s((5000, 96)),
        _s((5000,)), _s((256, 96))),
    "ivf_pq8_l2_residual": (lambda q, lists, off, x, bias, c, t, lt: _ivf_kernel(
        q, lists, off, x, bias, c, 10, "l2", by_residual=True, decode="pq", tables=t,
        list_tables=lt, nbits=8),
        _s((64, 96)), _s((64, 8), jnp.int32), _s((257,), jnp.int32),
        _s((5000, 48), jnp.uint8), _s((5000,)), _s((256, 96)), _s((64, 48, 256)),
        _s((256, 48, 256))),
    "ivf_pq4_ip": (lambda q, lists, off, x, bias, c, t: _ivf_kernel(
        q, lists, off, x, bias, c, 10, "ip", by_residual=False, decode="pq", tables=t,
        nbits=4),
        _s((64, 96)), _s((64, 8), jnp.int32), _s((257,), jnp.int32),
        _s((5000, 16), jnp.uint8), _s((5000,)), _s((256, 96)), _s((64, 32, 16))),
    "ivf_sq8_ip_multipass": (lambda q, lists, off, x, bias, c, lo, span: _ivf_kernel(
        q, lists, off, x, bias, c, 200, "ip", by_residual=True, decode="sq8", vmin=lo,
        vdiff=span),
        _s((16, 100)), _s((16, 16), jnp.int32), _s((65,), jnp.int32),
        _s((3000, 100), jnp.uint8), _s((3000,)), _s((64, 100)), _s((100,)), _s((100,))),
}


def _ivf_kernel(*args, **kw):
    return ivf_scan_pallas(*args, **kw)


@pytest.mark.parametrize("name", sorted(LOWERINGS))
def test_kernel_lowers_for_cuda(name):
    fn, *shapes = LOWERINGS[name]
    assert TRITON_CALL in _cuda_module_text(fn, *shapes)


def test_flat_search_lowers_for_cuda_with_and_without_kernel():
    index = jann.index_factory(96, "Flat")
    index = jann.reserve(index, 1000)

    def search(backend):
        return lambda ix, q: ix.search_core(q, 10, backend=backend)

    shapes = (jax.tree.map(lambda a: _s(a.shape, a.dtype), index), _s((32, 96)))
    assert TRITON_CALL in _cuda_module_text(search("pallas"), *shapes)
    assert TRITON_CALL not in _cuda_module_text(search("auto"), *shapes)


@pytest.mark.parametrize("codes", ["SQ8", "PQ16"])
def test_ivf_search_lowers_for_cuda_with_and_without_kernel(codes, rng):
    index = jann.train(jann.index_factory(96, f"IVF64,{codes}"),
                       rng.normal(size=(2000, 96)).astype(np.float32), key=jax.random.key(0))
    index = jann.reserve(index, 3000)

    def search(backend):
        return lambda ix, q: ix.search_core(q, 10, nprobe_bucket=8, backend=backend)

    shapes = (jax.tree.map(lambda a: _s(a.shape, a.dtype), index), _s((32, 96)))
    assert TRITON_CALL in _cuda_module_text(search("pallas"), *shapes)
    assert TRITON_CALL not in _cuda_module_text(search("auto"), *shapes)


# --- the GPU check's CPU dry run ----------------------------------------------------------
def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "gpu_kernels.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_kernels", "--dry-run", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(out.read_text())
    assert {r["kernel"] for r in results["kernels"]} >= {"knn", "hamming", "adc"}
    assert all(r["ids_agree"] and r["max_abs_diff"] < 1e-3 for r in results["kernels"])
