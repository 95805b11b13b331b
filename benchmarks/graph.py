"""Graph index: jann (HNSW / CAGRA-style graph) vs hnswlib and faiss-cpu IndexHNSWFlat, one run.

Run from the repo root:  python -m benchmarks.graph  [--nb 20000 --nq 2000 --threads 2 ...]

What is measured and how
- Data: Fashion-MNIST (784-d) from ../shared/data/fashion-mnist; the first --nb base rows
  (default: all) and the first --nq queries; exact ground truth recomputed (faiss
  IndexFlatL2) when the base is a subset.
- Build time of each index (jann: first build includes XLA compilation, then a second,
  warm build is timed; hnswlib M=16 and M=32 with ef_construction 200; faiss HNSW32 with
  its default efConstruction 40).
- Search: all queries in one call per ef, ef swept, best of --repeats after a warm-up
  (compilation reported apart), recall@10 against the exact neighbours.
- Headline: best QPS at recall@10 >= --target per method, and jann / hnswlib(M=16).
- Binary: jann BFlat vs faiss IndexBinaryFlat on 256-bit codes (sign of a random
  projection of the same data): QPS of one exact search over all queries, and whether the
  results agree.
Threads: every library limited to --threads CPUs (CPU affinity; see _common).
Writes <out>/graph.json, graph.md (also printed) and graph.png.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks import _common

DEFAULT_DATASET = _common.REPO_ROOT.parent / "shared" / "data" / "fashion-mnist"
EFS = (10, 12, 16, 20, 24, 32, 64, 128)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default=str(DEFAULT_DATASET))
    p.add_argument("--nb", type=int, default=None, help="use the first N base rows")
    p.add_argument("--nq", type=int, default=None, help="use the first N queries")
    p.add_argument("--jann", nargs="+", default=["HNSW16", "HNSW16,SQfp16"],
                   help="jann factory strings")
    p.add_argument("--efs", nargs="+", type=int, default=list(EFS))
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--target", type=float, default=0.95)
    p.add_argument("--out", default=str(_common.REPO_ROOT / "benchmarks" / "results"))
    return p.parse_args(argv)


def load(args):
    import numpy as np
    path = Path(args.dataset)
    xb = np.load(path / "base.npy").astype(np.float32)
    xq = np.load(path / "queries.npy").astype(np.float32)
    gt = np.load(path / "gt_ids.npy")
    subset = args.nb is not None and args.nb < len(xb)
    if subset:
        xb = xb[: args.nb]
    if args.nq is not None:
        xq, gt = xq[: args.nq], gt[: args.nq]
    if subset:
        import faiss
        flat = faiss.IndexFlatL2(xb.shape[1])
        flat.add(xb)
        gt = flat.search(xq, args.k)[1]
    return np.ascontiguousarray(xb), np.ascontiguousarray(xq), gt[:, : args.k]


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def build_all(args, xb):
    import faiss
    import hnswlib
    import jax

    import jann
    built = {}
    for description in args.jann:
        def make(description=description):
            index = jann.add(jann.index_factory(xb.shape[1], description), xb)
            jax.block_until_ready(index)
            return index
        index, first = timed(make)
        index, warm = timed(make)
        built[f"jann {description}"] = ("jann", index, {"first_s": first, "build_s": warm})
    for m in (16, 32):
        def make_hnswlib(m=m):
            index = hnswlib.Index(space="l2", dim=xb.shape[1])
            index.init_index(max_elements=len(xb), M=m, ef_construction=200, random_seed=0)
            index.set_num_threads(args.threads)
            index.add_items(xb)
            return index
        index, seconds = timed(make_hnswlib)
        built[f"hnswlib M={m}"] = ("hnswlib", index, {"build_s": seconds})

    def make_faiss():
        index = faiss.IndexHNSWFlat(xb.shape[1], 32)
        index.add(xb)
        return index
    index, seconds = timed(make_faiss)
    built["faiss HNSW32"] = ("faiss", index, {"build_s": seconds})
    return built


def searcher(kind, index, xq, k, ef):
    import faiss
    import jax

    import jann
    if kind == "jann":
        return lambda: jax.block_until_ready(jann.search(index, xq, k, ef=ef))[1]
    if kind == "hnswlib":
        def run():
            index.set_ef(max(ef, k))
            return index.knn_query(xq, k)[0]
        return run
    params = faiss.SearchParametersHNSW(efSearch=max(ef, k))
    return lambda: index.search(xq, k, params=params)[1]


def sweep(args, built, xq, gt):
    import numpy as np
    rows = {}
    for name, (kind, index, _) in built.items():
        rows[name] = []
        for ef in args.efs:
            ids, timing = _common.time_best_of(searcher(kind, index, xq, args.k, ef),
                                               args.repeats)
            rows[name].append({"ef": ef, "recall": _common.recall_at_k(np.asarray(ids), gt,
                                                                       args.k),
                               "qps": len(xq) / timing["best_s"], **timing})
            print(f"{name:>16} ef={ef:<4} recall={rows[name][-1]['recall']:.4f} "
                  f"QPS={rows[name][-1]['qps']:.0f}", flush=True)
    return rows


def best_at(points, target):
    ok = [p["qps"] for p in points if p["recall"] >= target]
    return max(ok) if ok else None


def binary_compare(xb, xq, k, repeats, nbits=256):
    import faiss
    import jax
    import numpy as np

    import jann
    rng = np.random.default_rng(0)
    proj = rng.standard_normal((xb.shape[1], nbits)).astype(np.float32)
    mean = xb.mean(0)
    cb = np.packbits((xb - mean) @ proj > 0, 1, bitorder="little")
    cq = np.packbits((xq - mean) @ proj > 0, 1, bitorder="little")
    ours = jann.add(jann.index_factory(nbits, "BFlat"), cb)
    theirs = faiss.IndexBinaryFlat(nbits)
    theirs.add(cb)
    timed_runs = _common.time_interleaved({
        "jann": lambda: jax.block_until_ready(jann.search(ours, cq, k)),
        "faiss": lambda: theirs.search(cq, k)}, repeats)
    (jd, _), jt = timed_runs["jann"]
    (fd, _), ft = timed_runs["faiss"]
    return {"nbits": nbits, "nb": len(cb), "nq": len(cq),
            "jann_qps": len(cq) / jt["best_s"], "faiss_qps": len(cq) / ft["best_s"],
            "qps_ratio": ft["best_s"] / jt["best_s"], "jann_first_s": jt["first_s"],
            "distances_equal": bool(np.array_equal(np.asarray(jd), fd.astype(np.float32)))}


def plot(results, path: Path, target: float):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (name, points) in enumerate(results["sweep"].items()):
        ax.plot([p["recall"] for p in points], [p["qps"] for p in points],
                "-o" if name.startswith("jann") else "--s", color=f"C{i}", label=name)
    ax.axvline(target, color="grey", lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.set_xlabel("recall@10")
    ax.set_ylabel("queries per second (log)")
    ax.set_title(f"{results['dataset']} {results['nb']} x {results['d']}, {results['nq']} "
                 f"queries, {results['threads']} threads")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(results) -> str:
    target = results["target_recall"]
    ref = results["qps_at_target"].get("hnswlib M=16")
    rows = []
    for name, points in results["sweep"].items():
        q = results["qps_at_target"][name]
        rows.append([name, results["build"][name]["build_s"],
                     results["build"][name].get("first_s", "-"),
                     max(p["recall"] for p in points), q or "-",
                     (q / ref) if q and ref else "-"])
    table = _common.markdown_table(
        ["method", "build s", "first build s (compile)", "best recall@10",
         f"QPS @R>={target}", "QPS / hnswlib M=16"], rows)
    sweep_rows = [[name, p["ef"], p["recall"], p["qps"], p["first_s"]]
                  for name, points in results["sweep"].items() for p in points]
    sweep = _common.markdown_table(["method", "ef", "recall@10", "QPS", "first call s"],
                                   sweep_rows)
    b = results["binary"]
    return (f"### Graph search, {results['dataset']} ({results['nb']} x {results['d']}, "
            f"{results['nq']} queries, k={results['k']}, {results['threads']} threads)\n\n"
            f"{table}\n\n{sweep}\n\nBinary: BFlat vs faiss IndexBinaryFlat, {b['nbits']}-bit "
            f"codes, {b['nb']} x {b['nq']} queries: jann {b['jann_qps']:.0f} QPS, faiss "
            f"{b['faiss_qps']:.0f} QPS (ratio {b['qps_ratio']:.2f}); distances equal: "
            f"{b['distances_equal']}\n")


def main(argv=None):
    args = parse_args(argv)
    threads = _common.limit_threads(args.threads)
    import faiss
    faiss.omp_set_num_threads(args.threads)
    xb, xq, gt = load(args)
    t0 = time.perf_counter()
    built = build_all(args, xb)
    results = {"machine": _common.machine_info(), "threads": args.threads,
               "thread_limits": threads, "dataset": Path(args.dataset).name, "nb": len(xb),
               "nq": len(xq), "d": xb.shape[1], "k": args.k, "target_recall": args.target,
               "argv": argv, "build": {name: b[2] for name, b in built.items()}}
    results["sweep"] = sweep(args, built, xq, gt)
    results["qps_at_target"] = {name: best_at(points, args.target)
                                for name, points in results["sweep"].items()}
    results["binary"] = binary_compare(xb, xq, args.k, args.repeats)
    results["total_s"] = time.perf_counter() - t0
    out = Path(args.out)
    _common.write_json(out / "graph.json", results)
    plot(results, out / "graph.png", args.target)
    md = markdown(results)
    (out / "graph.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
