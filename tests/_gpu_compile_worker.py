"""Deviceless ahead-of-time compile of jann's kernels and search programs for real targets
on a CPU machine: `cuda` (default) for H100 (sm_90) and A100 (sm_80), through XLA GPU,
Pallas -> Triton -> PTX -> ptxas -> cubin as a GPU would; `tpu` for a TPU v5e 2x2 slice
through libtpu. Run by tests/test_gpu_compile.py in its own process (the plugins must not
load into the other tests); prints one JSON line per case. Needs jax-cuda12-plugin /
jax-cuda12-pjrt (jax's version) and nvidia-cuda-nvcc-cu12, or libtpu, on the path; nothing
runs, so this says nothing of speed or numerics.
"""

import json
import os
import sys
import time

os.environ["JAX_PLATFORMS"] = "cpu"  # else the CUDA plugin calls cuInit and is dropped

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import topologies  # noqa: E402

import jann  # noqa: E402
from jann.ops.pallas import (adc_top_k_pallas, ivf_scan_pallas, knn_hamming_pallas,  # noqa: E402
                             knn_pallas)

_COMMON = """
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  threads_per_core_limit: 2048 fpus_per_core: 128 block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535 block_dim_limit_z: 65535 registers_per_core_limit: 65536
  registers_per_block_limit: 65536
"""
_TAIL = ('platform_name: "CUDA"\ndnn_version_info { major: 9 minor: 8 }\n'
         'runtime_version { major: 12 minor: 8 }\n')
TARGETS = {
    "H100": "gpu_device_info {" + _COMMON + """
  shared_memory_per_core: 233472 shared_memory_per_block_optin: 232448 core_count: 132
  memory_bandwidth: 3352320000000 l2_cache_size: 52428800 clock_rate_ghz: 1.98
  device_memory_size: 84942979072 cuda_compute_capability { major: 9 minor: 0 }
}
""" + _TAIL + 'device_description_str: "NVIDIA H100 80GB HBM3"\n',
    "A100": "gpu_device_info {" + _COMMON + """
  shared_memory_per_core: 167936 shared_memory_per_block_optin: 166912 core_count: 108
  memory_bandwidth: 2039040000000 l2_cache_size: 41943040 clock_rate_ghz: 1.41
  device_memory_size: 85100068864 cuda_compute_capability { major: 8 minor: 0 }
}
""" + _TAIL + 'device_description_str: "NVIDIA A100-SXM4-80GB"\n',
}
DIMS = (64, 128, 256, 384, 768, 1024, 1536)
KS = (1, 10, 100, 1024)
DTYPES = (jnp.float32, jnp.float16, jnp.bfloat16)


def _report(**fields):
    print(json.dumps(fields), flush=True)


def _compile(sharding, name, fn, *args):
    spec = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                        args)
    start = time.time()
    try:
        compiled = jax.jit(fn).lower(*spec).compile()
        _report(case=name, ok=True, seconds=round(time.time() - start, 2))
        return compiled
    except Exception as e:  # noqa: BLE001  (reported, the test fails on it)
        _report(case=name, ok=False, error=f"{type(e).__name__}: {' '.join(str(e).split())[:400]}")
        return None


def _zeros(shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype)


def _trained(d, spec, rng):
    x = rng.normal(size=(2048, d)).astype(np.float32)
    return jann.train(jann.index_factory(d, spec), x, key=jax.random.key(0))


def _search_program(index, **params):
    return lambda i, q: jann.search(i, q, k=10, **params)


def tpu_main():
    """The XLA path (backend "auto") of every index kind compiled for a TPU v5e 2x2 slice
    (libtpu's compile-only client; the Triton kernels are NVIDIA-only), each program
    replicated over its four chips."""
    rng = np.random.default_rng(0)
    topology = topologies.get_topology_desc(topology_name="v5e:2x2", platform="tpu")
    sh = jax.sharding.NamedSharding(topologies.make_mesh(topology, (4,), ("x",)),
                                    jax.sharding.PartitionSpec())
    for spec, d, params in (("Flat", 384, {}), ("Flat(bfloat16)", 768, {}),
                            ("IVF1024,Flat", 128, {"nprobe": 32}),
                            ("IVF1024,PQ32", 128, {"nprobe": 32}),
                            ("IVF1024,SQ8", 768, {"nprobe": 32}),
                            ("IVF1024,RQ4x8", 128, {"nprobe": 32}),
                            ("IVF1024,Flat,RFlat", 384, {"nprobe": 32}),
                            ("HNSW16", 128, {"ef": 64})):
        index = jann.index_factory(d, spec)
        if not index.is_trained:
            index = _trained(d, spec, rng)
        index = jann.reserve(index, 200_000)
        _compile(sh, f"TPUv5e search {spec} d={d} backend=auto", _search_program(index, **params),
                 index, _zeros((256, d)))
    bx = jann.reserve(jann.index_factory(256, "BFlat"), 100_000)
    _compile(sh, "TPUv5e search BFlat 256 bits backend=auto", _search_program(bx), bx,
             _zeros((256, 32), jnp.uint8))


def main():
    rng = np.random.default_rng(0)
    for target, config in TARGETS.items():
        topology = topologies.get_topology_desc(platform="cuda", target_config=config,
                                                topology="1x1x1")
        sh = jax.sharding.NamedSharding(topologies.make_mesh(topology, (1,), ("x",)),
                                        jax.sharding.PartitionSpec())
        # Kernels alone: every d x k x storage dtype.
        for d in DIMS:
            for k in KS:
                for dtype in DTYPES:
                    _compile(sh, f"{target} knn d={d} k={k} {dtype.__name__}",
                             lambda q, b, k=k: knn_pallas(q, b, k, "l2"),
                             _zeros((256, d)), _zeros((100_000, d), dtype))
                _compile(sh, f"{target} hamming bits={d} k={k}",
                         lambda q, b, k=k: knn_hamming_pallas(q, b, k),
                         _zeros((256, d // 8), jnp.uint8), _zeros((100_000, d // 8), jnp.uint8))
                _compile(sh, f"{target} ivf sq8 d={d} k={k}",
                         lambda q, lists, off, p, bias, c, vmin, vdiff, k=k: ivf_scan_pallas(
                             q, lists, off, p, bias, c, k, "l2", by_residual=True, decode="sq8",
                             vmin=vmin, vdiff=vdiff),
                         _zeros((256, d)), _zeros((256, 32), jnp.int32),
                         _zeros((1025,), jnp.int32), _zeros((100_000, d), jnp.uint8),
                         _zeros((100_000,)), _zeros((1024, d)), _zeros((d,)), _zeros((d,)))
                for nbits in (8, 4):  # M = d / 8 sub-spaces, bytes or nibbles
                    m = d // 8
                    _compile(sh, f"{target} adc M={m} nbits={nbits} k={k}",
                             lambda t, c, k=k, nbits=nbits: adc_top_k_pallas(t, c, k, nbits),
                             _zeros((256, m, 1 << nbits)),
                             _zeros((100_000, m * nbits // 8), jnp.uint8))
        # Whole public search programs with the kernels asked for, and the default.
        for d in (64, 128, 384, 768, 1024):
            ix = jann.reserve(jann.index_factory(d, "Flat"), 100_000)
            for backend in ("pallas", "auto"):
                _compile(sh, f"{target} search Flat d={d} backend={backend}",
                         lambda i, q, b=backend: jann.search(i, q, k=10, backend=b),
                         ix, _zeros((256, d)))
        for spec, d in (("IVF1024,Flat", 128), ("IVF1024,PQ32", 128), ("IVF1024,SQ8", 768),
                        ("IVF1024,PQ64x4", 768), ("IVF1024,RQ4x8", 128),
                        ("IVF1024,Flat,RFlat", 384)):
            ix = jann.reserve(_trained(d, spec, rng), 200_000)
            for backend in ("pallas", "auto"):
                _compile(sh, f"{target} search {spec} d={d} backend={backend}",
                         lambda i, q, b=backend: jann.search(i, q, k=10, nprobe=32, backend=b),
                         ix, _zeros((256, d)))
        bx = jann.reserve(jann.index_factory(256, "BFlat"), 100_000)
        _compile(sh, f"{target} search BFlat 256 bits backend=pallas",
                 lambda i, q: jann.search(i, q, k=10, backend="pallas"), bx,
                 _zeros((256, 32), jnp.uint8))
        gx = jann.reserve(jann.index_factory(128, "HNSW16"), 100_000)
        _compile(sh, f"{target} search HNSW16 d=128 backend=pallas",
                 lambda i, q: jann.search(i, q, k=10, ef=64, backend="pallas"), gx,
                 _zeros((256, 128)))
        # Memory: a 10M x 128 Flat search of 10k queries streams the database in tiles.
        big = jax.eval_shape(lambda: jann.FlatIndex.empty(128, capacity=10_000_000))
        compiled = _compile(sh, f"{target} search Flat 10M x 128, 10k queries (memory)",
                            lambda i, q: jann.search(i, q, k=10), big, _zeros((10_000, 128)))
        if compiled is not None:
            temp = compiled.memory_analysis().temp_size_in_bytes
            _report(case=f"{target} Flat 10M x 128 temp memory < 1 GiB", ok=temp < 2**30,
                    error=f"temp {temp / 2**20:.0f} MiB")


if __name__ == "__main__":
    sys.exit(tpu_main() if sys.argv[1:] == ["tpu"] else main())  # else "cuda"
