"""Sharded vs unsharded search on 8 simulated CPU devices, memory per device, and a model of
throughput at 100M / 1B vectors.

Run from the repo root:  python -m benchmarks.sharding  [--queries 2000 --repeats 3 ...]

What is measured and how
- Devices: XLA_FLAGS=--xla_force_host_platform_device_count=8 (set here, before jax
  starts) splits this machine's CPUs (--threads, default 2) into 8 jax devices. They
  share the same cores, so sharding cannot speed search up here: the figure is the cost
  of the sharded program (8 per-device searches, the all-gather of 8 x k candidates, the
  merge) against one device doing all the work on the same cores.
- Data: Fashion-MNIST (60k x 784 base, float32, squared L2), the first --queries queries,
  k=10; recall@10 against the dataset's exact neighbours.
- Indexes: Flat and IVF1024,Flat (nprobe 16; coarse quantizer trained once, on one
  device, and shared, so every layout probes the same lists), both `shrink_to_fit`, and
  the graph index --graph (HNSW16, ef 32; sharded = one sub-graph per device, built when
  placed: placement time reported; its ids differ from the one graph's, recall is the
  measure). Layouts: unsharded (one
  device), sharded over the 8 devices (`jann.shard`), replicated (`jann.replicate`:
  queries split over the devices). Search time: all queries in one `jann.search` call,
  results on the host; first call (compilation) reported apart, then best of --repeats
  interleaved runs (`_common.time_interleaved`).
- Agreement: fraction of result ids equal to the unsharded index's (1.0 = identical).
- Memory: bytes of each addressable shard per device (`jann.sharding.device_bytes`):
  sharded, each device holds ~1/8 of the vectors plus its copy of the IVF centroids.
- Distributed k-means: `jann.sharding.kmeans_sharded` on the base split over the 8
  devices vs `jann.kmeans` on one (k=1024, --kmeans-iters iterations, same key): time
  (compilation included), objective, largest centroid difference.
- Model: query throughput at 100M and 1B vectors on GPU and TPU meshes, from the
  formulas in `scaling_model` (stated hardware figures; an estimate, not a measurement).
Writes <out>/sharding.json and sharding.md (also printed).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from benchmarks import _common

DEVICES = 8
DEFAULT_DATASET = _common.REPO_ROOT.parent / "shared" / "data" / "fashion-mnist"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default=str(DEFAULT_DATASET))
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--nlist", type=int, default=1024)
    p.add_argument("--nprobe", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--kmeans-iters", type=int, default=5)
    p.add_argument("--graph", default="HNSW16", help="graph index factory string")
    p.add_argument("--ef", type=int, default=32, help="graph search ef")
    p.add_argument("--out", default=str(_common.REPO_ROOT / "benchmarks" / "results"))
    return p.parse_args(argv)


# ------------------------------------------------------------------------ the model
# Hardware figures the model uses (public spec sheets; "effective" = a fraction one can
# expect from a matmul-shaped scan, stated so the estimate can be redone).
HARDWARE = {
    "H100-SXM (GPU cluster, 8 per host)": {
        "hbm_gb": 80, "hbm_tb_s": 3.35, "tflops_bf16": 989, "efficiency": 0.5,
        "link_gb_s": 450, "host_link_gb_s": 50, "per_host": 8},
    "TPU v5e (pod slice, 4 per host)": {
        "hbm_gb": 16, "hbm_tb_s": 0.82, "tflops_bf16": 197, "efficiency": 0.5,
        "link_gb_s": 100, "host_link_gb_s": 100, "per_host": 4},
}


def scaling_model(n_vectors: int, d: int, devices: int, hw: dict, *, k: int = 10,
                  batch: int = 4096, nlist: int | None = None, nprobe: int = 0) -> dict:
    """Estimated queries/s of an index of n bf16 vectors sharded over `devices` chips.

    Per batch of `batch` queries, each device holding n / devices rows:
    - scan: Flat compares every query with every row; IVF with nprobe / nlist of them, plus
      the coarse quantizer (batch x nlist) that each device holds a copy of. Work is a
      matmul: 2 * batch * rows * d FLOP at `efficiency` of the bf16 peak.
    - memory: each row read once per batch (the list-major scan reads a probed list once
      for all the queries probing it): rows * d * 2 bytes, IVF only the lists some query
      probes (a fraction min(1, batch * nprobe / nlist) of them) - at HBM bandwidth.
    - merge: the all-gather of devices * k (distance, id) pairs (8 bytes) per query over
      the slowest link crossed (host network once the mesh spans hosts), then a top-k.
    time = max(scan, memory) + merge; fits when the rows take <= 90% of HBM.
    """
    shard_rows = n_vectors / devices
    flop_s = hw["tflops_bf16"] * 1e12 * hw["efficiency"]
    if nlist is None:
        scanned, read = shard_rows, shard_rows
        t_coarse = 0.0
    else:
        scanned = shard_rows * nprobe / nlist
        read = shard_rows * min(1.0, batch * nprobe / nlist)
        t_coarse = 2 * batch * nlist * d / flop_s
    t_scan = 2 * batch * scanned * d / flop_s + t_coarse
    t_mem = read * d * 2 / (hw["hbm_tb_s"] * 1e12)
    link = hw["link_gb_s"] if devices <= hw["per_host"] else hw["host_link_gb_s"]
    t_merge = batch * devices * k * 8 / (link * 1e9) if devices > 1 else 0.0
    per_device_gb = 2 * shard_rows * d / 1e9
    t = max(t_scan, t_mem) + t_merge
    return {"devices": devices, "fits": per_device_gb <= hw["hbm_gb"] * 0.9,
            "gb_per_device": per_device_gb, "qps": batch / t, "merge_share": t_merge / t,
            "bound": "memory" if t_mem > t_scan else "compute"}


def model_table(d: int = 128, mesh_size: int = 256) -> list[list]:
    """Rows of the model for pure sharding over 1..mesh_size devices, and for the 2-D
    layout: the fewest shards the vectors fit in, replicated to fill mesh_size devices
    (each replica group answers its own query batches: R x the group's throughput)."""
    rows = []
    for name, hw in HARDWARE.items():
        for n in (100_000_000, 1_000_000_000):
            for kind, ivf in (("Flat", {}), ("IVF65536, nprobe 64", {"nlist": 65536,
                                                                      "nprobe": 64})):
                for devices in (1, 8, 32, mesh_size):
                    m = scaling_model(n, d, devices, hw, **ivf)
                    rows.append(_model_row(name, n, kind, f"shard {devices}", m))
                shards = next(s for s in (1, 2, 4, 8, 16, 32, 64, 128, 256)
                              if scaling_model(n, d, s, hw)["fits"])
                m = scaling_model(n, d, shards, hw, **ivf)
                m = {**m, "qps": m["qps"] * mesh_size // shards}
                rows.append(_model_row(name, n, kind,
                                       f"shard {shards} x replicate {mesh_size // shards}", m))
    return rows


def _model_row(name, n, kind, layout, m):
    return [name, f"{n / 1e6:.0f}M", kind, layout, round(m["gb_per_device"], 1),
            f"{m['qps']:.3g}" if m["fits"] else "does not fit", m["bound"],
            round(m["merge_share"], 3)]


# ---------------------------------------------------------------------- measurement
def measure(args) -> dict:
    import jax
    import numpy as np
    import jann
    from jann import sharding

    assert len(jax.devices()) == DEVICES, jax.devices()
    data = Path(args.dataset)
    xb = np.load(data / "base.npy").astype(np.float32)
    xq = np.load(data / "queries.npy")[: args.queries].astype(np.float32)
    gt = np.load(data / "gt_ids.npy")[: args.queries, : args.k]
    mesh = jax.make_mesh((DEVICES,), ("x",))
    out = {"n": xb.shape[0], "d": xb.shape[1], "queries": xq.shape[0], "k": args.k,
           "devices": DEVICES, "indexes": {}}

    start = time.perf_counter()
    flat = jann.shrink_to_fit(jann.add(jann.index_factory(xb.shape[1], "Flat"), xb))
    quantizer_key = jax.random.key(0)
    t0 = time.perf_counter()
    ivf = jann.train(jann.index_factory(xb.shape[1], f"IVF{args.nlist},Flat"), xb,
                     key=quantizer_key)
    out["ivf_train_s"] = time.perf_counter() - t0
    ivf = jann.shrink_to_fit(jann.add(ivf, xb))
    out["build_s"] = time.perf_counter() - start
    t0 = time.perf_counter()
    graph = jann.add(jann.index_factory(xb.shape[1], args.graph), xb)
    out["graph_build_s"] = time.perf_counter() - t0
    out["graph"] = args.graph

    for name, index, params in (("Flat", flat, {}),
                                (f"IVF{args.nlist},Flat", ivf, {"nprobe": args.nprobe}),
                                (args.graph, graph, {"ef": args.ef})):
        t0 = time.perf_counter()
        sharded = jann.shard(index, mesh)
        shard_s = time.perf_counter() - t0
        layouts = {"unsharded": index, "sharded x8": sharded,
                   "replicated x8": jann.replicate(index, mesh)}

        def runner(ix):
            return lambda: np.asarray(jax.block_until_ready(
                jann.search(ix, xq, args.k, **params))[1])

        timed = _common.time_interleaved({lay: runner(ix) for lay, ix in layouts.items()},
                                         args.repeats)
        reference = timed["unsharded"][0]
        entry = {}
        for lay, ix in layouts.items():
            ids, timing = timed[lay]
            per_device = sharding.device_bytes(ix)
            entry[lay] = {**timing, "qps": xq.shape[0] / timing["best_s"],
                          "recall": _common.recall_at_k(ids, gt, args.k),
                          "same_ids_as_unsharded": float((ids == reference).mean()),
                          "bytes_per_device": sorted(per_device.values()),
                          "devices_used": len(per_device)}
        entry["sharded x8"]["placement_s"] = shard_s
        base = entry["unsharded"]["best_s"]
        for lay in entry:
            entry[lay]["time_vs_unsharded"] = entry[lay]["best_s"] / base
        out["indexes"][name] = entry


    t0 = time.perf_counter()
    ref = jann.kmeans(xb, args.nlist, key=jax.random.key(1), niter=args.kmeans_iters)
    single_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    dist = sharding.kmeans_sharded(xb, args.nlist, mesh, key=jax.random.key(1),
                                   niter=args.kmeans_iters)
    out["kmeans"] = {"k": args.nlist, "niter": args.kmeans_iters, "points": xb.shape[0],
                     "single_device_s": single_s, "sharded_s": time.perf_counter() - t0,
                     "objective_single": ref.objective[-1],
                     "objective_sharded": dist.objective[-1],
                     "max_centroid_diff": float(np.abs(np.asarray(ref.centroids) -
                                                       np.asarray(dist.centroids)).max())}
    return out


def report(result: dict) -> str:
    lines = [f"### Sharding on {result['devices']} simulated CPU devices, Fashion-MNIST "
             f"({result['n']} x {result['d']}, {result['queries']} queries, k={result['k']}, "
             f"{result['threads']['requested']} cores shared by all devices)", "",
             f"Other processes used {result['contention']['other_processes_cpu_fraction']:.0%}"
             f" of the machine's CPU during the run (a shared machine: times are noisy).", ""]
    rows = []
    for name, entry in result["indexes"].items():
        for lay, m in entry.items():
            sizes = m["bytes_per_device"]
            rows.append([name, lay, round(m["first_s"], 2), round(m["best_s"], 3),
                         round(m["time_vs_unsharded"], 2), round(m["qps"]),
                         round(m["recall"], 4), m["same_ids_as_unsharded"],
                         m["devices_used"], f"{min(sizes) / 2**20:.1f}-{max(sizes) / 2**20:.1f}"])
    lines.append(_common.markdown_table(
        ["index", "layout", "first call s", "search best s", "time / unsharded", "QPS",
         "recall@10", "same ids as unsharded", "devices", "MiB per device (min-max)"],
        rows))
    if "graph" in result:
        lines += ["", f"{result['graph']}: one graph over all rows built in "
                  f"{result['graph_build_s']:.1f} s; sharding it (8 sub-graphs, built on the "
                  f"host) took {result['indexes'][result['graph']]['sharded x8']['placement_s']:.1f}"
                  " s. The sub-graphs are other graphs than the one: their ids differ from it "
                  "where the search is approximate, and recall is the measure."]
    km = result["kmeans"]
    lines += ["", f"k-means k={km['k']}, {km['niter']} iterations on {km['points']} points: "
              f"one device {km['single_device_s']:.1f} s, split over 8 devices (psum of sums "
              f"and counts) {km['sharded_s']:.1f} s; objective {km['objective_single']:.6g} vs "
              f"{km['objective_sharded']:.6g}, largest centroid difference "
              f"{km['max_centroid_diff']:.3g}", ""]
    lines += ["### Model: sharded query throughput at 100M and 1B vectors (d=128, bf16, "
              "batches of 4096, k=10; estimate)", "",
              _common.markdown_table(["hardware", "vectors", "index", "layout (devices)",
                                      "GB per device", "QPS (model)", "bound by",
                                      "merge share"], result["model"])]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    threads = _common.limit_threads(args.threads)
    if "jax" in sys.modules:
        raise RuntimeError("benchmarks.sharding must start jax itself (device count flag)")
    os.environ["XLA_FLAGS"] = (f"{os.environ['XLA_FLAGS']} "
                               f"--xla_force_host_platform_device_count={DEVICES}")
    threads["XLA_FLAGS"] = os.environ["XLA_FLAGS"]
    snap, start = _common.cpu_snapshot(), time.perf_counter()
    result = measure(args)
    result.update(threads=threads, model=model_table(), machine=_common.machine_info(),
                  contention=_common.contention(snap, _common.cpu_snapshot()),
                  total_s=time.perf_counter() - start, hardware_assumed=HARDWARE,
                  args=vars(args))
    out = Path(args.out)
    _common.write_json(out / "sharding.json", result)
    text = report(result)
    (out / "sharding.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
