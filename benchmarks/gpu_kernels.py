"""Pallas kernels against their XLA paths: time, agreement and memory-bandwidth roofline.

On a GPU (`benchmarks/gpu_check.sh`) each kernel runs at benchmark shapes through
`jann.ops.dispatch` with backend="xla" and backend="pallas"; the JSON records the best
time of each, the speedup, bytes read / time against the HBM roofline, and whether the
two backends agree. `--dry-run` runs tiny shapes on any machine (the Pallas side in
interpret mode there), so CI checks the script without a GPU; its timings mean nothing.

    python -m benchmarks.gpu_kernels --out benchmarks/results/gpu_kernels.json
    python -m benchmarks.gpu_kernels --dry-run
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jann.ops import dispatch

# H200 HBM3e peak (NVIDIA's datasheet figure); the roofline column divides by it.
PEAK_BYTES_PER_S = 4.8e12

# name, kernel, shapes: (nq, n, d or bytes or M, k, dtype / nbits, metric)
FULL_CASES = [
    ("flat_1M_x128_f32", "knn", dict(nq=1024, n=1_000_000, d=128, k=10, dtype="float32")),
    ("flat_1M_x128_f16", "knn", dict(nq=1024, n=1_000_000, d=128, k=10, dtype="float16")),
    ("flat_10M_x96_f16", "knn", dict(nq=256, n=10_000_000, d=96, k=10, dtype="float16")),
    ("flat_1M_x128_k1024", "knn", dict(nq=256, n=1_000_000, d=128, k=1024,
                                       dtype="float32")),
    ("hamming_1M_x256bit", "hamming", dict(nq=1024, n=1_000_000, nbytes=32, k=10)),
    ("adc_1M_pq64x8", "adc", dict(nq=1024, n=1_000_000, M=64, nbits=8, k=10)),
    ("adc_1M_pq64x4", "adc", dict(nq=1024, n=1_000_000, M=64, nbits=4, k=10)),
    ("ivf_flat_1M_x128_nprobe32", "ivf", dict(nq=4096, n=1_000_000, d=128, k=10, nlist=4096,
                                              nprobe=32)),
    ("ivf_flat_1M_x128_nprobe64", "ivf", dict(nq=4096, n=1_000_000, d=128, k=10, nlist=4096,
                                              nprobe=64)),
    # FAISS GPU's published IVF4096,PQ64 figure: 10k queries at nprobe 32 in 0.134 s
    # (SIFT1M, Titan X).
    ("ivf_pq64_1M_x128_nprobe32", "ivf", dict(nq=10000, n=1_000_000, d=128, k=10,
                                              nlist=4096, nprobe=32, M=64, nbits=8)),
    ("ivf_pq64_1M_x128_nprobe64", "ivf", dict(nq=10000, n=1_000_000, d=128, k=10,
                                              nlist=4096, nprobe=64, M=64, nbits=8)),
]
DRY_CASES = [
    ("knn_dry", "knn", dict(nq=5, n=300, d=24, k=7, dtype="float16")),
    ("hamming_dry", "hamming", dict(nq=5, n=300, nbytes=12, k=7)),
    ("adc_dry", "adc", dict(nq=5, n=300, M=6, nbits=4, k=7)),
    ("ivf_dry", "ivf", dict(nq=5, n=300, d=24, k=7, nlist=8, nprobe=3)),
    ("ivf_pq_dry", "ivf", dict(nq=5, n=300, d=24, k=7, nlist=8, nprobe=3, M=6, nbits=8)),
]


def _ivf_index(s: dict, key):
    """An IVF index of random vectors (IVF-Flat), or random PQ codes by residual (IVF-PQ
    when s has M and nbits), in nlist equal lists (the scan's cost depends on the shapes
    only): built from its fields, no k-means."""
    import dataclasses
    from jann.ivf import IVFIndex
    from jann.quantizers.identity import IdentityCodec
    from jann.quantizers.pq import ProductQuantizer, code_size_for
    k1, k2, k3 = jax.random.split(key, 3)
    n, d, nlist = s["n"], s["d"], s["nlist"]
    if "M" in s:
        codec = ProductQuantizer.create(d, s["M"], s["nbits"])
        codec = dataclasses.replace(codec, is_trained=True, centroids=jax.random.normal(
            k3, codec.centroids.shape, jnp.float32))
        payload = jax.random.randint(k2, (n, code_size_for(s["M"], s["nbits"])), 0, 256,
                                     jnp.int32).astype(jnp.uint8)
        norms = jnp.sum(codec.decode(payload) ** 2, axis=1)
        index = IVFIndex.create(d, nlist, codec, by_residual=True)
    else:
        payload = jax.random.normal(k2, (n, d), jnp.float32)
        norms = jnp.sum(payload * payload, axis=1)
        index = IVFIndex.create(d, nlist, IdentityCodec.create(d), by_residual=False)
    index = index.with_centroids(jax.random.normal(k1, (nlist, d), jnp.float32))
    offsets = (jnp.arange(nlist + 1) * n // nlist).astype(jnp.int32)
    return dataclasses.replace(
        index, payload=payload, norms=norms, ids=jnp.arange(n, dtype=jnp.int32),
        offsets=offsets, count=jnp.int32(n), is_trained=True)


def _inputs(kernel: str, s: dict, key):
    k1, k2 = jax.random.split(key)
    if kernel == "knn":
        xq = jax.random.normal(k1, (s["nq"], s["d"]), jnp.float32)
        xb = jax.random.normal(k2, (s["n"], s["d"]), jnp.float32).astype(s["dtype"])
        bytes_read = xb.size * xb.dtype.itemsize
        return (xq, xb), bytes_read
    if kernel == "hamming":
        a = jax.random.randint(k1, (s["nq"], s["nbytes"]), 0, 256, jnp.int32).astype(jnp.uint8)
        b = jax.random.randint(k2, (s["n"], s["nbytes"]), 0, 256, jnp.int32).astype(jnp.uint8)
        return (a, b), b.size
    if kernel == "ivf":
        index = _ivf_index(s, k1)
        xq = jax.random.normal(k2, (s["nq"], s["d"]), jnp.float32)
        rows_scanned = s["nq"] * s["nprobe"] * (s["n"] // s["nlist"])
        return (index, xq), rows_scanned * index.payload[0].nbytes
    ksub = 1 << s["nbits"]
    tables = jax.random.uniform(k1, (s["nq"], s["M"], ksub), jnp.float32)
    code_size = s["M"] if s["nbits"] > 4 else -(-s["M"] // 2)
    codes = jax.random.randint(k2, (s["n"], code_size), 0, 256, jnp.int32).astype(jnp.uint8)
    return (tables, codes), codes.size


def _search_fn(kernel: str, s: dict, backend: str):
    if kernel == "knn":
        return jax.jit(lambda q, b: dispatch.knn_search(q, b, s["k"], "l2", backend=backend))
    if kernel == "hamming":
        return jax.jit(lambda a, b: dispatch.hamming_search(a, b, s["k"], backend=backend))
    if kernel == "ivf":  # the index's own path: coarse assignment + list scan
        return jax.jit(lambda ix, q: ix.search_core(q, s["k"], nprobe_bucket=s["nprobe"],
                                                    backend=backend))
    return jax.jit(lambda t, c: dispatch.adc_search(t, c, s["k"], s["nbits"], "l2",
                                                    backend=backend))


def _best_time(fn, args, repeats: int):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return out, first, best


def run_case(name: str, kernel: str, s: dict, repeats: int) -> dict:
    args, bytes_read = _inputs(kernel, s, jax.random.key(0))
    row = {"name": name, "kernel": kernel, **s, "bytes_read": int(bytes_read)}
    outs = {}
    for backend in ("xla", "pallas"):
        out, first, best = _best_time(_search_fn(kernel, s, backend), args, repeats)
        outs[backend] = out
        row[backend] = {"first_call_s": first, "best_s": best,
                        "bytes_per_s": bytes_read / best,
                        "roofline_fraction": bytes_read / best / PEAK_BYTES_PER_S}
    (dx, ix), (dp, ip) = (jax.tree.map(np.asarray, outs[b]) for b in ("xla", "pallas"))
    finite = np.isfinite(dx) & np.isfinite(dp)
    row["max_abs_diff"] = float(np.abs(dx[finite].astype(np.float64) - dp[finite]).max(
        initial=0.0))
    # Ids may differ only between equal distances.
    row["ids_agree"] = bool(np.all((ix == ip) | np.isclose(dx, dp, rtol=1e-5, atol=1e-5)))
    row["speedup_pallas_over_xla"] = row["xla"]["best_s"] / row["pallas"]["best_s"]
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true",
                   help="tiny shapes, any backend (Pallas interpreted off-GPU)")
    p.add_argument("--out", type=Path, help="JSON output (default: print only)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--only", nargs="*", help="case names to run")
    args = p.parse_args(argv)
    if not args.dry_run and jax.default_backend() != "gpu":
        print("gpu_kernels: no GPU backend (use --dry-run for the CPU check)", file=sys.stderr)
        return 2
    cases = DRY_CASES if args.dry_run else FULL_CASES
    if args.only:
        cases = [c for c in cases if c[0] in args.only]
    rows = []
    for name, kernel, shapes in cases:
        row = run_case(name, kernel, shapes, 1 if args.dry_run else args.repeats)
        rows.append(row)
        print(f"{name:24s} xla {row['xla']['best_s'] * 1e3:9.2f} ms  pallas "
              f"{row['pallas']['best_s'] * 1e3:9.2f} ms  x{row['speedup_pallas_over_xla']:.2f}"
              f"  roofline {row['pallas']['roofline_fraction']:.0%}  ids_agree "
              f"{row['ids_agree']}", file=sys.stderr)
    result = {
        "dry_run": args.dry_run,
        "device": str(jax.devices()[0]),
        "device_kind": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "python": platform.python_version(),
        "peak_bytes_per_s": PEAK_BYTES_PER_S,
        "kernels": rows,
    }
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
