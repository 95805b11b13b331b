"""IVF indexes: jann vs faiss-cpu recall-QPS curves, build times and memory, one run.

Run from the repo root:  python -m benchmarks.ivf  [--dataset PATH --threads 2 ...]

What is measured and how
- Data: Fashion-MNIST (60k x 784 base, all 10k queries, k=10) by default, or any dataset
  `jann.io.load_dataset` reads (ground truth computed exactly when the files have none).
- For each factory string (default IVF1024,Flat / IVF1024,PQ56 / IVF1024,PQ56,RFlat), the
  same string is built by both libraries: train time (jann: first build includes XLA
  compilation, reported apart from a second, warm build) and add time.
- Search: every query in one call per setting, nprobe swept over powers of two (k_factor 4
  for the refined index), timed with `_common.time_interleaved` (warm-up excluded, best
  of --repeats, alternating libraries). recall@10 against exact neighbours.
- Headline: for each string, the best QPS among settings reaching recall@10 >= --target
  (0.95) for each library, and their ratio.
- Memory: bytes jann's index holds after `shrink_to_fit` (codes, ids, per-row norms, list
  offsets; the coarse centroids and codebooks apart) against n * (code_size + 8) bytes,
  the codes + int64 ids FAISS's inverted lists hold.
- k-means alone: jann.kmeans vs faiss.Kmeans (k=1024, 10 iterations): time, objective.
- k-means memory (shape test, random N(0,1) data): 1M x 128 float32, k=1024, 3 iterations,
  every point used (no subsampling), each library in its own subprocess
  (`--kmeans-memory-child`): peak RSS of training over the RSS with the data loaded. The
  data are 512 MB; an (n, k) distance matrix would be 4 GB, which jann's tiled assignment
  never allocates.
Threads: both libraries limited to --threads CPUs (CPU affinity; see _common).
Writes <out>/ivf.json, ivf.md (also printed) and ivf.png (recall-QPS curves).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks import _common

DEFAULT_DATASET = _common.REPO_ROOT.parent / "shared" / "data" / "fashion-mnist"
DEFAULT_STRINGS = ("IVF1024,Flat", "IVF1024,PQ56", "IVF1024,PQ56,RFlat")
NPROBES = (1, 2, 4, 8, 16, 32, 64)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default=str(DEFAULT_DATASET))
    p.add_argument("--strings", nargs="+", default=list(DEFAULT_STRINGS))
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--target", type=float, default=0.95)
    p.add_argument("--queries", type=int, default=None, help="use the first N queries")
    p.add_argument("--out", default=str(_common.REPO_ROOT / "benchmarks" / "results"))
    p.add_argument("--skip-kmeans-memory", action="store_true")
    p.add_argument("--render", metavar="JSON", help="rewrite ivf.md / ivf.png from a run's JSON")
    p.add_argument("--kmeans-memory-child", choices=("jann", "faiss"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def load(path: str, k: int, n_queries: int | None):
    import numpy as np
    from jann import datasets, io
    data = io.load_dataset(path)
    xb = np.ascontiguousarray(data["base"], np.float32)
    xq = np.ascontiguousarray(data["queries"][:n_queries], np.float32)
    gt = data.get("gt_ids")
    if gt is None or gt.shape[1] < k:
        gt = datasets.exact_knn(xq, xb, k)[1]
    return xb, xq, np.asarray(gt)[: len(xq), :k]


def settings_for(description: str):
    refine = {"k_factor": 4} if "RFlat" in description or "Refine" in description else {}
    return [{"nprobe": p, **refine} for p in NPROBES]


def build_jann(description, xb):
    import jax
    import jann
    out = {}
    for label in ("first", "warm"):
        t0 = time.perf_counter()
        index = jann.train(jann.index_factory(xb.shape[1], description), xb,
                           key=jax.random.key(0))
        jax.block_until_ready(jax.tree.leaves(index))
        t1 = time.perf_counter()
        index = jann.shrink_to_fit(jann.add(index, xb))
        jax.block_until_ready(jax.tree.leaves(index))
        out[label] = {"train_s": t1 - t0, "add_s": time.perf_counter() - t1}
    return index, out


def build_faiss(description, xb):
    import faiss
    t0 = time.perf_counter()
    index = faiss.index_factory(xb.shape[1], description)
    index.train(xb)
    t1 = time.perf_counter()
    index.add(xb)
    return index, {"train_s": t1 - t0, "add_s": time.perf_counter() - t1}


def jann_memory(index, code_size: int) -> dict:
    """Bytes of the inverted lists (and of everything) against codes + int64 ids."""
    import jax
    import jann
    base = getattr(index, "base", index)  # a refined index: its IVF part
    n = jann.ntotal(base)
    lists = sum(a.nbytes for a in (base.payload, base.ids, base.norms, base.offsets))
    total = sum(leaf.nbytes for leaf in jax.tree.leaves(index))
    reference = n * (code_size + 8)
    return {"ntotal": n, "list_bytes": lists, "index_bytes_total": total,
            "codes_plus_ids_bytes": reference, "list_bytes_over_codes_plus_ids": lists / reference}


def sweep(description, jann_index, faiss_index, xq, gt, k, repeats):
    import faiss
    import jax
    import jann
    rows = []
    for setting in settings_for(description):
        if setting["nprobe"] > getattr(getattr(jann_index, "base", jann_index), "nlist", 1):
            continue
        space = faiss.ParameterSpace()
        for name, value in setting.items():
            space.set_index_parameter(faiss_index, "k_factor_rf" if name == "k_factor"
                                      else name, value)

        def run_jann():
            D, I = jann.search(jann_index, xq, k, **setting)
            return jax.block_until_ready(I)

        timed = _common.time_interleaved(
            {"jann": run_jann, "faiss": lambda: faiss_index.search(xq, k)[1]}, repeats)
        row = {"setting": setting}
        for lib, (ids, timing) in timed.items():
            row[lib] = {"recall": _common.recall_at_k(ids, gt, k),
                        "qps": len(xq) / timing["best_s"], "timing": timing}
        rows.append(row)
        print(f"  {description} {setting}: jann r={row['jann']['recall']:.4f} "
              f"qps={row['jann']['qps']:.0f} | faiss r={row['faiss']['recall']:.4f} "
              f"qps={row['faiss']['qps']:.0f}", flush=True)
    return rows


def best_at(rows, lib, target):
    ok = [r[lib]["qps"] for r in rows if r[lib]["recall"] >= target]
    return max(ok) if ok else None


def qps_at_recall(rows, lib, recall):
    """lib's QPS at exactly this recall, interpolated (log QPS, linear in recall) between
    its two sweep settings around it; None outside its curve."""
    import math
    pts = sorted((r[lib]["recall"], r[lib]["qps"]) for r in rows)
    for (r0, q0), (r1, q1) in zip(pts, pts[1:]):
        if r0 <= recall <= r1:
            t = 0.0 if r1 == r0 else (recall - r0) / (r1 - r0)
            return math.exp((1 - t) * math.log(q0) + t * math.log(q1))
    return None


def equal_recall_ratio(rows, target):
    """jann's fastest setting reaching the target, against faiss at that same recall:
    the threshold alone favours whichever library lands just above the target."""
    best = max((r for r in rows if r["jann"]["recall"] >= target),
               key=lambda r: r["jann"]["qps"], default=None)
    if best is None:
        return None
    theirs = qps_at_recall(rows, "faiss", best["jann"]["recall"])
    return None if theirs is None else {
        "recall": best["jann"]["recall"], "jann_qps": best["jann"]["qps"],
        "faiss_qps_interpolated": theirs, "ratio": best["jann"]["qps"] / theirs}


def kmeans_compare(xb, k=1024, niter=10):
    import faiss
    import jax
    import jann
    t0 = time.perf_counter()
    ours = jann.kmeans(xb, k, key=jax.random.key(0), niter=niter)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    km = faiss.Kmeans(xb.shape[1], k, niter=niter, seed=1)
    km.train(xb)
    t_faiss = time.perf_counter() - t0
    return {"k": k, "niter": niter, "jann_s_incl_compile": t_ours, "faiss_s": t_faiss,
            "jann_objective": ours.objective[-1], "faiss_objective": float(km.obj[-1]),
            "objective_ratio": ours.objective[-1] / float(km.obj[-1]),
            "time_ratio": t_ours / t_faiss}


KMEANS_MEMORY = {"n": 1_000_000, "d": 128, "k": 1024, "niter": 3}


def kmeans_memory_child(lib: str) -> dict:
    """Train k-means on random data in this fresh process; RSS before and at peak."""
    import numpy as np
    n, d, k, niter = (KMEANS_MEMORY[f] for f in ("n", "d", "k", "niter"))
    x = np.random.default_rng(0).standard_normal((n, d), np.float32)
    if lib == "jann":
        import jax
        import jann

        def train():
            return jann.kmeans(x, k, key=jax.random.key(0), niter=niter,
                               max_points_per_centroid=n).centroids.block_until_ready()
    else:
        import faiss

        def train():
            km = faiss.Kmeans(d, k, niter=niter, seed=1, max_points_per_centroid=n)
            km.train(x)
            return km.centroids
    _, phase = _common.run_tracked(train)
    return {"lib": lib, **KMEANS_MEMORY, "data_bytes": x.nbytes, **phase,
            "train_extra_peak": phase["peak_rss"] - phase["rss_before"]}


def kmeans_memory(threads: int) -> dict:
    return {lib: _common.run_child("benchmarks.ivf", ["--kmeans-memory-child", lib,
                                                       "--threads", str(threads)])
            for lib in ("jann", "faiss")}


def plot(results, path: Path, target: float):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (description, res) in enumerate(results["indexes"].items()):
        color = f"C{i}"
        for lib, style in (("jann", "-o"), ("faiss", "--s")):
            pts = [(r[lib]["recall"], r[lib]["qps"]) for r in res["sweep"]]
            ax.plot(*zip(*pts), style, color=color, label=f"{lib} {description}",
                    alpha=1.0 if lib == "jann" else 0.6)
    ax.axvline(target, color="grey", lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.set_xlabel("recall@10")
    ax.set_ylabel("queries per second (log)")
    ax.set_title(f"{results['dataset']} - {results['threads']} threads, all queries in one batch")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _equal_recall_cell(rows, target) -> str:
    eq = equal_recall_ratio(rows, target)
    return "-" if eq is None else f"{eq['ratio']:.3g} (R={eq['recall']:.4f})"


def _same_setting_cell(rows) -> str:
    """Both libraries at each same setting (same nprobe / k_factor: recall within a few
    1e-4 of each other, so the QPS ratio there is a ratio at equal recall)."""
    ratios = [r["jann"]["qps"] / r["faiss"]["qps"] for r in rows]
    gap = max(abs(r["jann"]["recall"] - r["faiss"]["recall"]) for r in rows)
    return f"{min(ratios):.2f}-{max(ratios):.2f} ({gap:.4f})"


def markdown(results, target) -> str:
    rows = []
    for description, res in results["indexes"].items():
        j, f = res["qps_at_target"]["jann"], res["qps_at_target"]["faiss"]
        rows.append([description, res["build"]["jann"]["warm"]["train_s"],
                     res["build"]["faiss"]["train_s"], res["build"]["jann"]["warm"]["add_s"],
                     res["build"]["faiss"]["add_s"], j or "-", f or "-",
                     (j / f) if j and f else "-", _equal_recall_cell(res["sweep"], target),
                     _same_setting_cell(res["sweep"]),
                     res["memory"]["list_bytes_over_codes_plus_ids"]])
    table = _common.markdown_table(
        ["index", "jann train s", "faiss train s", "jann add s", "faiss add s",
         f"jann QPS @R>={target}", f"faiss QPS @R>={target}", "ratio",
         "ratio at jann's recall (faiss interpolated)",
         "ratio per setting, min-max (recall gap)", "lists / (codes+ids)"], rows)
    km = results["kmeans"]
    return (f"## IVF, {results['dataset']} ({results['nb']} x {results['d']}, {results['nq']} "
            f"queries, k={results['k']}, {results['threads']} threads)\n\n{table}\n\n"
            f"k-means k={km['k']}, {km['niter']} iterations: jann {km['jann_s_incl_compile']:.1f} s "
            f"(incl. compile) vs faiss {km['faiss_s']:.1f} s (x{km['time_ratio']:.2f}); "
            f"objective ratio {km['objective_ratio']:.4f}\n" + kmeans_memory_line(results))


def kmeans_memory_line(results) -> str:
    mem = results.get("kmeans_memory")
    if not mem:
        return ""
    j, f = mem["jann"], mem["faiss"]
    return (f"\nk-means memory, {j['n']} x {j['d']} random float32 ({j['data_bytes'] / 2**20:.0f} "
            f"MiB), k={j['k']}, {j['niter']} iterations, no subsampling: training peak over the "
            f"RSS with the data loaded: jann {j['train_extra_peak'] / 2**20:.0f} MiB "
            f"({j['seconds']:.1f} s), faiss {f['train_extra_peak'] / 2**20:.0f} MiB "
            f"({f['seconds']:.1f} s)\n")


def main(argv=None):
    args = parse_args(argv)
    threads = _common.limit_threads(args.threads)
    import faiss
    faiss.omp_set_num_threads(args.threads)
    if args.render:
        results = json.loads(Path(args.render).read_text())
        out = Path(args.out)
        plot(results, out / "ivf.png", results["target_recall"])
        (out / "ivf.md").write_text(markdown(results, results["target_recall"]))
        print(markdown(results, results["target_recall"]))
        return
    if args.kmeans_memory_child:
        print(json.dumps(kmeans_memory_child(args.kmeans_memory_child),
                         default=_common.json_default))
        return
    xb, xq, gt = load(args.dataset, args.k, args.queries)
    results = {"machine": _common.machine_info(), "threads": args.threads,
               "thread_limits": threads, "dataset": Path(args.dataset).name,
               "nb": len(xb), "nq": len(xq), "d": xb.shape[1], "k": args.k,
               "target_recall": args.target, "indexes": {}}
    for description in args.strings:
        print(f"building {description}", flush=True)
        jann_index, jann_build = build_jann(description, xb)
        faiss_index, faiss_build = build_faiss(description, xb)
        rows = sweep(description, jann_index, faiss_index, xq, gt, args.k, args.repeats)
        code_size = faiss.downcast_index(getattr(faiss_index, "base_index", faiss_index)).code_size
        results["indexes"][description] = {
            "build": {"jann": jann_build, "faiss": faiss_build}, "sweep": rows,
            "qps_at_target": {lib: best_at(rows, lib, args.target) for lib in ("jann", "faiss")},
            "memory": jann_memory(jann_index, code_size)}
    results["kmeans"] = kmeans_compare(xb)
    if not args.skip_kmeans_memory:
        print("k-means memory, 1M x 128", flush=True)
        results["kmeans_memory"] = kmeans_memory(args.threads)
    out = Path(args.out)
    _common.write_json(out / "ivf.json", results)
    plot(results, out / "ivf.png", args.target)
    md = markdown(results, args.target)
    (out / "ivf.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
