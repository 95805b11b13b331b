"""Deviceless ahead-of-time compile of jann's kernels and search programs for real targets
on a CPU machine: `H100` (sm_90) or `A100` (sm_80), one GPU and four, through XLA GPU,
Pallas -> Triton -> PTX -> ptxas -> cubin as a GPU would; `tpu` for a TPU v5e 2x2 slice
through libtpu. Run by tests/test_gpu_compile.py, a process per target (the plugins must
not load into the other tests; the targets compile side by side); prints one JSON line
per case. Needs jax-cuda12-plugin /
jax-cuda12-pjrt (jax's version) and nvidia-cuda-nvcc-cu12, or libtpu, on the path; nothing
runs, so this says nothing of speed or numerics.
"""

import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import os
import sys
import time
from pathlib import Path

os.environ["JAX_PLATFORMS"] = "cpu"  # else the CUDA plugin calls cuInit and is dropped
# Four CPU devices lay out the sharded indexes before they are re-typed for the target.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=4")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import topologies  # noqa: E402

import jann  # noqa: E402
from jann.ops.adc import adc_top_k_pallas  # noqa: E402
from jann.ops.hamming import knn_hamming_pallas  # noqa: E402
from jann.ops.ivf_scan import ivf_scan_pallas  # noqa: E402
from jann.ops.knn import knn_pallas  # noqa: E402

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


def _spec(a, sharding):
    """a (an array or ShapeDtypeStruct) as an abstract input; one already placed on the
    target mesh keeps its own sharding."""
    own = getattr(a, "sharding", None)
    if own is not None and not isinstance(own, jax.sharding.SingleDeviceSharding):
        sharding = own
    return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding)


# Programs that compiled before, by a digest of everything the compile reads: the lowered
# program (StableHLO, with each Pallas kernel's Triton IR or Mosaic module inside it), the
# target, the XLA flags and the compilers' versions. A program seen there compiled with
# the same inputs, so it is not compiled again: the check then costs what changed (as a
# build system's up-to-date check). jax's own persistent cache cannot serve this (a
# compile-only client cannot load an executable back). JANN_COMPILE_CHECK_CACHE names the
# folder (default ~/.cache/jann/aot-results); "off" compiles every program.
_CACHE_SETTING = os.environ.get("JANN_COMPILE_CHECK_CACHE", "")
CACHE_DIR = None if _CACHE_SETTING == "off" else Path(
    _CACHE_SETTING or Path.home() / ".cache" / "jann" / "aot-results")
_TOOLCHAIN = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda12-pjrt", "nvidia-cuda-nvcc-cu12",
              "libtpu")


@functools.lru_cache(maxsize=None)
def _versions():
    found = []  # the same for every program of a run: looked up once
    for name in _TOOLCHAIN:
        try:
            found.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} absent")
    return tuple(found)


_SALT = None  # the target and toolchain part of every digest, set by the main functions


# Kernel IR holds its source files' absolute paths (in Triton bytecode, length-prefixed,
# so they cannot be edited out): marks are reused by checkouts at the same path.
def _digest(lowered) -> str:
    text = "\n".join([_SALT, os.environ.get("XLA_FLAGS", ""), *_versions(), lowered.as_text()])
    return hashlib.sha256(text.encode()).hexdigest()


def _compiled_before(lowered):
    """(whether this program compiled before, the mark to leave when it compiles)."""
    if CACHE_DIR is None:
        return False, None
    mark = CACHE_DIR / f"{_digest(lowered)}.ok"
    return mark.exists(), mark


def _remember(mark):
    if mark is not None:
        mark.parent.mkdir(parents=True, exist_ok=True)
        mark.write_text("compiled\n")


def _compile_lowered(lowered, reuse: bool):
    """lowered compiled, or None where the same program compiled before (reuse=True:
    the caller needs only to know that it compiles)."""
    seen, mark = _compiled_before(lowered) if reuse else (False, None)
    if seen:
        return None
    compiled = lowered.compile()
    _remember(mark)
    return compiled


def _error(e):
    return f"{type(e).__name__}: {' '.join(str(e).split())[:400]}"


def _compile(sharding, name, fn, *args, reuse=True):
    """Compile fn for the target and report; the compiled program, or None (failed, or
    compiled before: reuse=False for callers that read the compiled program)."""
    spec = jax.tree.map(lambda a: _spec(a, sharding), args)
    start = time.time()
    try:
        compiled = _compile_lowered(jax.jit(fn).lower(*spec), reuse)
        _report(case=name, ok=True, seconds=round(time.time() - start, 2),
                compiled_before=compiled is None)
        return compiled
    except Exception as e:  # noqa: BLE001  (reported, the test fails on it)
        _report(case=name, ok=False, error=_error(e))
        return None


def _compile_group(sharding, members, *args, reuse=True):
    """Compile members {case name: fn(*args)} as one program (XLA compiles the kernels of
    one module with one set-up: ~35% less time than a program each) and report every
    member; if the group fails, each member alone, so the report names the one at fault."""
    spec = jax.tree.map(lambda a: _spec(a, sharding), args)
    start = time.time()
    try:
        lowered = jax.jit(lambda *a: [fn(*a) for fn in members.values()]).lower(*spec)
        compiled = _compile_lowered(lowered, reuse)
    except Exception:  # noqa: BLE001
        for name, fn in members.items():
            _compile(sharding, name, fn, *args, reuse=reuse)
        return None
    seconds = round((time.time() - start) / len(members), 2)
    for name in members:
        _report(case=name, ok=True, seconds=seconds, compiled_before=compiled is None)
    return compiled


def _zeros(shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype)


_TRAINED = {}


def _trained(d, spec):
    if (d, spec) not in _TRAINED:
        x = np.random.default_rng(0).normal(size=(2048, d)).astype(np.float32)
        index = jann.index_factory(d, spec)
        if not index.is_trained:
            index = jann.train(index, x, key=jax.random.key(0))
        _TRAINED[d, spec] = index
    return _TRAINED[d, spec]


def _search(backend="auto", **params):
    return lambda i, q: jann.search(i, q, k=10, backend=backend, **params)


def _on_mesh(index, mesh, mode):
    """index split ("shard") or copied ("replicate") over the 4 devices of the target
    mesh, abstractly: placed on 4 CPU devices for its layout, then every array re-typed
    for the same partition of the target's devices."""
    cpu = jax.sharding.Mesh(np.array(jax.devices("cpu")[:4]), ("x",))
    place = jann.shard if mode == "shard" else jann.replicate
    placed = jann.reserve(place(index, cpu, "x"), 400_000)
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=jax.sharding.NamedSharding(
            mesh, a.sharding.spec)), placed.index)
    return dataclasses.replace(placed, index=abstract, mesh=mesh)


SHARDED_CASES = (("Flat", 128, {}), ("IVF1024,Flat", 128, {"nprobe": 32}),
                 ("IVF1024,PQ32", 128, {"nprobe": 32}))


def _sharded_searches(target, mesh, replicated, backends):
    """Flat and IVF split over the target's 4 devices (shard_map, top-k merged across
    them), queries replicated."""
    for spec, d, params in SHARDED_CASES:
        index = _on_mesh(_trained(d, spec), mesh, "shard")
        compiled = _compile_group(replicated, {
            f"{target} sharded x4 search {spec} d={d} backend={b}": _search(b, **params)
            for b in backends}, index, _zeros((256, d)), reuse=False)
        if compiled is not None:  # each device scans its part, then the results meet
            _report(case=f"{target} sharded x4 {spec} gathers across devices",
                    ok="all-gather" in compiled.as_text(), error="no all-gather in the program")


def tpu_main():
    """The XLA path (backend "auto") of every index kind compiled for a TPU v5e 2x2 slice
    (libtpu's compile-only client; the Triton kernels are NVIDIA-only): each program
    replicated over its four chips, then Flat and IVF split over them."""
    global _SALT
    _SALT = "TPU v5e 2x2"
    topology = topologies.get_topology_desc(topology_name="v5e:2x2", platform="tpu")
    mesh = topologies.make_mesh(topology, (4,), ("x",))
    sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    for spec, d, params in (("Flat", 384, {}), ("Flat(bfloat16)", 768, {}),
                            ("IVF1024,Flat", 128, {"nprobe": 32}),
                            ("IVF1024,PQ32", 128, {"nprobe": 32}),
                            ("IVF1024,SQ8", 768, {"nprobe": 32}),
                            ("IVF1024,RQ4x8", 128, {"nprobe": 32}),
                            ("IVF1024,Flat,RFlat", 384, {"nprobe": 32}),
                            ("HNSW16", 128, {"ef": 64})):
        index = jann.reserve(_trained(d, spec), 200_000)
        _compile(sh, f"TPUv5e search {spec} d={d} backend=auto", _search(**params),
                 index, _zeros((256, d)))
    bx = jann.reserve(jann.index_factory(256, "BFlat"), 100_000)
    _compile(sh, "TPUv5e search BFlat 256 bits backend=auto", _search(), bx,
             _zeros((256, 32), jnp.uint8))
    _sharded_searches("TPUv5e", mesh, sh, ("auto",))


def _kernels(target, sh):
    """Every kernel at every d x k x storage dtype (one program per kernel and d)."""
    for d in DIMS:
        _compile_group(sh, {
            f"{target} knn d={d} k={k} {dtype.__name__}":
                lambda q, b32, b16, bb16, k=k, i=i: knn_pallas(q, (b32, b16, bb16)[i], k, "l2")
            for k in KS for i, dtype in enumerate(DTYPES)},
            _zeros((256, d)), *(_zeros((100_000, d), dtype) for dtype in DTYPES))
        _compile_group(sh, {
            f"{target} hamming bits={d} k={k}": lambda q, b, k=k: knn_hamming_pallas(q, b, k)
            for k in KS}, _zeros((256, d // 8), jnp.uint8), _zeros((100_000, d // 8), jnp.uint8))
        _compile_group(sh, {
            f"{target} ivf sq8 d={d} k={k}":
                lambda q, lists, off, p, bias, c, vmin, vdiff, k=k: ivf_scan_pallas(
                    q, lists, off, p, bias, c, k, "l2", by_residual=True, decode="sq8",
                    vmin=vmin, vdiff=vdiff)
            for k in KS},
            _zeros((256, d)), _zeros((256, 32), jnp.int32), _zeros((1025,), jnp.int32),
            _zeros((100_000, d), jnp.uint8), _zeros((100_000,)), _zeros((1024, d)),
            _zeros((d,)), _zeros((d,)))
        m = d // 8  # M = d / 8 sub-spaces, bytes or nibbles
        _compile_group(sh, {
            f"{target} adc M={m} nbits={nbits} k={k}":
                lambda t8, c8, t4, c4, k=k, nbits=nbits: adc_top_k_pallas(
                    *((t8, c8) if nbits == 8 else (t4, c4)), k, nbits)
            for nbits in (8, 4) for k in KS},
            _zeros((256, m, 256)), _zeros((100_000, m), jnp.uint8),
            _zeros((256, m, 16)), _zeros((100_000, m // 2), jnp.uint8))


def cuda_main(target):
    global _SALT
    config = _SALT = TARGETS[target]
    single = topologies.get_topology_desc(platform="cuda", target_config=config,
                                          topology="1x1x1")
    sh = jax.sharding.NamedSharding(topologies.make_mesh(single, (1,), ("x",)),
                                    jax.sharding.PartitionSpec())
    _kernels(target, sh)
    # Whole public search programs with the kernels asked for, and the default.
    backends = ("pallas", "auto")
    for d in (64, 128, 384, 768, 1024):
        ix = jann.reserve(jann.index_factory(d, "Flat"), 100_000)
        _compile_group(sh, {f"{target} search Flat d={d} backend={b}": _search(b)
                            for b in backends}, ix, _zeros((256, d)))
    for spec, d in (("IVF1024,Flat", 128), ("IVF1024,PQ32", 128), ("IVF1024,SQ8", 768),
                    ("IVF1024,PQ64x4", 768), ("IVF1024,RQ4x8", 128),
                    ("IVF1024,Flat,RFlat", 384)):
        ix = jann.reserve(_trained(d, spec), 200_000)
        _compile_group(sh, {f"{target} search {spec} d={d} backend={b}": _search(b, nprobe=32)
                            for b in backends}, ix, _zeros((256, d)))
    bx = jann.reserve(jann.index_factory(256, "BFlat"), 100_000)
    _compile(sh, f"{target} search BFlat 256 bits backend=pallas", _search("pallas"), bx,
             _zeros((256, 32), jnp.uint8))
    gx = jann.reserve(jann.index_factory(128, "HNSW16"), 100_000)
    _compile(sh, f"{target} search HNSW16 d=128 backend=pallas", _search("pallas", ef=64), gx,
             _zeros((256, 128)))
    # Four GPUs: the database split over them.
    four = topologies.get_topology_desc(platform="cuda", target_config=config,
                                        topology="1x1x4")
    mesh = topologies.make_mesh(four, (4,), ("x",))
    _sharded_searches(target, mesh, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
                      backends)
    # Memory: a 10M x 128 Flat search of 10k queries streams the database in tiles.
    big = jax.eval_shape(lambda: jann.FlatIndex.create(128, capacity=10_000_000))
    compiled = _compile(sh, f"{target} search Flat 10M x 128, 10k queries (memory)",
                        _search(), big, _zeros((10_000, 128)), reuse=False)
    if compiled is not None:
        temp = compiled.memory_analysis().temp_size_in_bytes
        _report(case=f"{target} Flat 10M x 128 temp memory < 1 GiB", ok=temp < 2**30,
                error=f"temp {temp / 2**20:.0f} MiB")


if __name__ == "__main__":  # argv: "tpu", or a key of TARGETS (one process per target)
    sys.exit(tpu_main() if sys.argv[1] == "tpu" else cuda_main(sys.argv[1]))
