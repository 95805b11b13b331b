"""The speed matrix: every dataset x index x query batch, jann beside faiss-cpu / hnswlib.

Run from the repo root:

    python -m benchmarks.matrix            # the whole matrix (not yet run whole; three
                                           #   datasets x four IVF/Flat kinds took 20 min)
    python -m benchmarks.matrix --quick    # a subset (6 minutes on 2 cores, not yet the 5 asked)

For each dataset (../shared/data) and index (Flat, IVF<nlist>,Flat, IVF<nlist>,SQ8,
IVF<nlist>,PQ<d/8>, IVF<nlist>,PQ<d/4>, HNSW32; nlist the power of two nearest 4 sqrt(n)),
each library builds the index in a process of its own (build time and peak RSS are the
process's), then:

1. calibrates: the cheapest search setting (nprobe / ef on a sqrt(2) grid, bisected) whose
   recall@10 on the first --calibration-queries queries reaches each target (0.90, 0.95;
   for PQ, 0.9 x the peer's best recall, as PQ caps recall below those);
2. times that setting at every batch size: batches of 256 and more as calls on
   consecutive query slices, batches of 1 and 16 as a loop of calls (as a service sends
   them); each timing runs until --min-queries queries or --seconds seconds, best of
   --repeats. The first call of each batch size (compilation for jann) is apart.

Peers: faiss-cpu with the same factory string for every index, and hnswlib (M=16,
ef_construction=200) for the graph. Ratios (jann / peer QPS at the same recall target
and batch, build time ratios) come from the same run. The CPU share taken by other
processes is recorded with every timing: only quiet runs count.

Writes <out>/matrix.json (everything), matrix.md (tables) and matrix.png.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import _common

DATASETS = ("sift-textures", "debian-minilm", "fashion-mnist", "sift-textures-1m")
INDEXES = ("Flat", "IVF,Flat", "IVF,SQ8", "IVF,PQd/8", "IVF,PQd/4", "HNSW32")
BATCHES = (1, 16, 256, 2000, 10000)
TARGETS = (0.90, 0.95)
PQ_RELATIVE_TARGET = 0.9
HNSWLIB_CONFIG = "M=16,efc=200"
K = 10
QUICK = {"datasets": ("sift-textures", "debian-minilm"),
         "indexes": ("Flat", "IVF,Flat", "IVF,PQd/8"), "batches": (1, 16, 2000),
         "targets": (0.95,)}


def nlist_for(n: int) -> int:
    """The power of two nearest 4 sqrt(n) (FAISS's rule of thumb is 4-16 sqrt(n))."""
    return 1 << round(math.log2(4 * math.sqrt(n)))


def factory_string(template: str, n: int, d: int) -> str:
    s = template.replace("IVF,", f"IVF{nlist_for(n)},")
    for frac in ("d/8", "d/4"):
        s = s.replace(f"PQ{frac}", f"PQ{d // int(frac[2:])}")
    return s


def setting_grid(values: tuple[int, ...]) -> list[int]:
    """A sqrt(2) grid between the space's smallest and largest value (both kept)."""
    lo, hi = min(values), max(values)
    grid, v = {lo, hi}, float(lo)
    while v < hi:
        grid.add(int(round(v)))
        v *= math.sqrt(2)
    return sorted(g for g in grid if lo <= g <= hi)


# ------------------------------------------------------------------------ one process
def _parse_child(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.matrix --child")
    p.add_argument("--child", action="store_true")
    p.add_argument("--dataset", required=True)
    p.add_argument("--library", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--targets", type=float, nargs="*", default=list(TARGETS))
    p.add_argument("--relative-target", type=float, default=None,
                   help="also calibrate for this fraction of the best recall reached")
    p.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--calibration-queries", type=int, default=2000)
    p.add_argument("--min-queries", type=int, default=10000)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _timed_batches(search, xq, batch: int, params: dict, min_queries: int,
                   seconds: float) -> dict:
    """QPS of calls of `batch` queries on consecutive slices (wrapping), until min_queries
    queries are done or `seconds` passed (at least one call)."""
    n, done, calls = len(xq), 0, 0
    snap, start, cpu = _common.cpu_snapshot(), time.perf_counter(), time.process_time()
    while True:
        lo = (calls * batch) % n
        chunk = xq[lo:lo + batch] if lo + batch <= n else np.concatenate(
            [xq[lo:], xq[:batch - (n - lo)]])
        search(chunk, params)
        calls, done = calls + 1, done + batch
        if done >= min_queries or time.perf_counter() - start >= seconds:
            break
    wall = time.perf_counter() - start
    return {"qps": done / wall, "calls": calls, "queries": done, "seconds": wall,
            "cpu_util": (time.process_time() - cpu) / wall,
            "others_cpu": _common.contention(snap, _common.cpu_snapshot())[
                "other_processes_cpu_fraction"]}


def _calibrate(recall_of, grid: list[int], target: float):
    """The smallest grid value whose recall reaches target (recall grows along the grid),
    by bisection; None when even the largest does not."""
    lo, hi = 0, len(grid) - 1
    if recall_of(grid[hi]) < target:
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if recall_of(grid[mid]) >= target:
            hi = mid
        else:
            lo = mid + 1
    return grid[lo]


def child_main(argv) -> dict:
    args = _parse_child(argv)
    _common.limit_threads(args.threads)
    from benchmarks import run
    data = run.load_data(argparse.Namespace(
        dataset=args.dataset, metric=None, queries=None, recall_at=[K],
        cache_dir=str(Path.home() / ".cache" / "jann" / "gt")), _common.Progress())
    library = run.LIBRARIES[args.library]
    runner = library(args.config, data.xb.shape[1], data.metric, args.threads, args.seed)
    _, build = _common.run_tracked(lambda: runner.build(data.xb))
    # compile_s: the part of the build jax spent tracing and compiling (a second build in
    # the same process would skip it); None for libraries that compile nothing.
    build["compile_s"] = getattr(runner, "compile_s", None)
    out = {"library": args.library, "config": args.config, "version": library.version(),
           "build": build, "index_bytes": runner.index_bytes(),
           "build_includes_compile": runner.build_includes_compile}

    space = runner.space(K)
    knob = next(iter(space), None)
    if len(space) > 1:
        raise SystemExit(f"{args.config}: more than one search knob {sorted(space)}")
    xcal, gtcal = data.xq[:args.calibration_queries], data.gt[:args.calibration_queries]
    recalls: dict[int, float] = {}

    def search(xq, params):
        return runner.search(xq, K, params)

    def recall_of(value) -> float:
        if value not in recalls:
            params = {knob: value} if knob else {}
            recalls[value] = _common.recall_at_k(search(xcal, params), gtcal, K)
        return recalls[value]

    grid = setting_grid(tuple(space[knob])) if knob else [0]
    targets = {f"{t:.2f}": t for t in args.targets}
    if args.relative_target:
        best = recall_of(grid[-1])
        targets[f"{args.relative_target:g} x best"] = args.relative_target * best
        out["best_recall"] = best
    cells = {}
    for name, target in targets.items():
        value = _calibrate(recall_of, grid, target) if knob else (
            0 if recall_of(0) >= target else None)
        if value is None:
            cells[name] = {"target": target, "reached": False,
                           "best_recall": recall_of(grid[-1])}
            continue
        params = {knob: value} if knob else {}
        cell = {"target": target, "reached": True, "params": params,
                "recall": recall_of(value), "batches": {}}
        for batch in args.batches:
            first = time.perf_counter()
            search(data.xq[:batch], params)
            first = time.perf_counter() - first
            runs = [_timed_batches(search, data.xq, batch, params, args.min_queries,
                                   args.seconds) for _ in range(args.repeats)]
            best = max(runs, key=lambda r: r["qps"])
            cell["batches"][str(batch)] = {**best, "first_call_s": first,
                                           "runs_qps": [r["qps"] for r in runs]}
        cells[name] = cell
    out["calibration"] = {"knob": knob, "recalls": {str(v): r for v, r in recalls.items()},
                          "queries": len(xcal)}
    out["cells"] = cells
    out["dataset"] = {"name": data.name, "nb": len(data.xb), "d": data.xb.shape[1],
                      "nq": len(data.xq), "metric": data.metric}
    return out


# ------------------------------------------------------------------------ the matrix
def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.matrix",
                                description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=None)
    p.add_argument("--indexes", nargs="+", default=None,
                   help=f"templates among {' '.join(INDEXES)} (IVF, = IVF<nlist>,)")
    p.add_argument("--batches", type=int, nargs="+", default=None)
    p.add_argument("--targets", type=float, nargs="+", default=None)
    p.add_argument("--libraries", nargs="+", default=("jann", "faiss", "hnswlib"))
    p.add_argument("--quick", action="store_true", help="a subset (6 minutes on 2 cores)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--out", default=str(_common.REPO_ROOT / "benchmarks" / "results"))
    p.add_argument("--name", default=None, help="output stem (default matrix / matrix-quick)")
    p.add_argument("--render", metavar="JSON", help="only rewrite .md / .png from a JSON")
    return p.parse_args(argv)


def _peers(template: str, libraries) -> list[tuple[str, str]]:
    """(library, config) pairs for an index template; jann first, peers after."""
    out = [("jann", template)]
    if "faiss" in libraries:
        out.append(("faiss", template))
    if template.startswith("HNSW") and "hnswlib" in libraries:
        out.append(("hnswlib", HNSWLIB_CONFIG))
    return [(lib, cfg) for lib, cfg in out if lib in libraries]


def _dataset_shape(name: str) -> tuple[int, int]:
    info = json.loads((_common.REPO_ROOT.parent / "shared" / "data" / name /
                       "info.json").read_text())
    shape = info["files"]["base.npy"]["shape"]
    return shape[0], shape[1]


def main(argv=None):
    args = _parse(argv)
    out_dir = Path(args.out)
    stem = args.name or ("matrix-quick" if args.quick else "matrix")
    if args.render:
        results = json.loads(Path(args.render).read_text())
        print(write_reports(results, Path(args.render)))
        return results
    quick = QUICK if args.quick else {}
    datasets = args.datasets or quick.get("datasets", DATASETS)
    templates = args.indexes or quick.get("indexes", INDEXES)
    batches = args.batches or quick.get("batches", BATCHES)
    targets = args.targets or quick.get("targets", TARGETS)
    seconds = args.seconds or (1.0 if args.quick else 2.0)
    repeats = args.repeats or (1 if args.quick else 2)
    progress = _common.Progress()
    results = {"machine": _common.machine_info(), "threads": args.threads, "k": K,
               "batches": list(batches), "targets": list(targets), "quick": args.quick,
               "argv": sys.argv[1:] if argv is None else list(argv), "cells": []}
    start = time.perf_counter()
    for dataset in datasets:
        n, d = _dataset_shape(dataset)
        for template in templates:
            config = factory_string(template, n, d)
            is_pq = ",PQ" in config
            peer_best = None
            # Peers first: a PQ target is a fraction of the peer's best recall.
            for library, lib_config in reversed(_peers(config, args.libraries)):
                child = ["--child", "--dataset", dataset, "--library", library,
                         "--config", lib_config, "--threads", str(args.threads),
                         "--batches", *map(str, batches), "--seconds", str(seconds),
                         "--repeats", str(repeats)]
                if is_pq:
                    child += ["--targets"]
                    if library != "jann" or peer_best is None:
                        child += ["--relative-target", str(PQ_RELATIVE_TARGET)]
                    else:
                        child += [str(PQ_RELATIVE_TARGET * peer_best)]
                else:
                    child += ["--targets", *map(str, targets)]
                label = f"{dataset} {library}:{lib_config}"
                with progress.task(label):
                    try:
                        res = _common.run_child("benchmarks.matrix", child)
                    except RuntimeError as e:
                        res = {"library": library, "config": lib_config, "error": str(e)}
                if is_pq and library != "jann" and "best_recall" in res:
                    peer_best = max(peer_best or 0.0, res["best_recall"])
                    res["cells"] = {f"{PQ_RELATIVE_TARGET:g} x peer best": c
                                    for c in res["cells"].values()}
                if is_pq and library == "jann" and peer_best is not None:
                    res["cells"] = {f"{PQ_RELATIVE_TARGET:g} x peer best": c
                                    for c in res["cells"].values()}
                res["data"] = res.pop("dataset", None)
                results["cells"].append({**res, "dataset": dataset, "n": n, "d": d,
                                         "index": config})
                _summarize_line(progress, results["cells"][-1])
            _common.write_json(out_dir / f"{stem}.json", results)
    results["total_s"] = time.perf_counter() - start
    path = _common.write_json(out_dir / f"{stem}.json", results)
    print(write_reports(results, path))
    return results


def _summarize_line(progress, cell: dict):
    if "error" in cell:
        progress.line(f"  {cell['library']}: ERROR {cell['error'][-300:]}")
        return
    parts = [f"build {cell['build']['seconds']:.1f} s" + _compile_part(cell["build"])]
    for name, c in cell["cells"].items():
        if not c["reached"]:
            parts.append(f"{name}: not reached (best {c['best_recall']:.3f})")
            continue
        qps = " ".join(f"{b}:{v['qps']:,.0f}" for b, v in c["batches"].items())
        parts.append(f"{name} {c['params']} r={c['recall']:.3f} QPS {qps}")
    progress.line(f"  {cell['library']}: " + "; ".join(parts))


def _compile_part(build: dict) -> str:
    compile_s = build.get("compile_s")
    return "" if compile_s is None else f" (compile {compile_s:.1f} s)"


# ------------------------------------------------------------------------ reports
def ratio_rows(results: dict) -> list[dict]:
    """One row per (dataset, index, target, batch, peer): jann QPS / peer QPS."""
    by_key = {}
    for c in results["cells"]:
        if "error" not in c:
            by_key[(c["dataset"], c["index"], c["library"])] = c
    rows = []
    for (dataset, index, library), jann in by_key.items():
        if library != "jann":
            continue
        for peer_lib in ("faiss", "hnswlib"):
            peer = by_key.get((dataset, index, peer_lib))
            if peer is None:
                continue
            for target, jc in jann["cells"].items():
                pc = peer["cells"].get(target)
                if pc is None:
                    continue
                for batch in results["batches"]:
                    jb = jc.get("batches", {}).get(str(batch))
                    pb = pc.get("batches", {}).get(str(batch))
                    rows.append({
                        "dataset": dataset, "index": index, "peer": peer_lib,
                        "target": target, "batch": batch,
                        "jann_qps": jb and jb["qps"], "peer_qps": pb and pb["qps"],
                        "ratio": jb and pb and jb["qps"] / pb["qps"],
                        "jann_params": jc.get("params"), "peer_params": pc.get("params"),
                        "others_cpu": max((jb or {}).get("others_cpu", 0),
                                          (pb or {}).get("others_cpu", 0))})
            rows.append({"dataset": dataset, "index": index, "peer": peer_lib,
                         "target": "build", "batch": None,
                         "jann_qps": None, "peer_qps": None,
                         "ratio": jann["build"]["seconds"] / peer["build"]["seconds"],
                         "jann_build_s": jann["build"]["seconds"],
                         "jann_compile_s": jann["build"].get("compile_s"),
                         "ratio_without_compile": None if jann["build"].get(
                             "compile_s") is None else (jann["build"]["seconds"]
                             - jann["build"]["compile_s"]) / peer["build"]["seconds"],
                         "peer_build_s": peer["build"]["seconds"],
                         "jann_peak_rss": jann["build"]["peak_rss"],
                         "peer_peak_rss": peer["build"]["peak_rss"]})
    return rows


def _build_ratio(build: dict | None) -> str:
    if build is None:
        return "-"
    warm = build.get("ratio_without_compile")
    return f"{build['ratio']:.2f}x" + ("" if warm is None else f" ({warm:.2f}x)")


def markdown(results: dict) -> str:
    rows = ratio_rows(results)
    batches = results["batches"]
    lines = [f"# jann speed matrix ({results['threads']} threads, k={results['k']})", "",
             "QPS ratio jann / peer at the same recall@10 target, per query batch "
             "(batches below 256: a loop of calls). Build: jann's train + add time / "
             "the peer's, with jann's compiling and (in brackets) without it.", ""]
    table = []
    for r in rows:
        if r["target"] == "build":
            continue
        key = (r["dataset"], r["index"], r["peer"], r["target"])
        if not table or table[-1][0] != key:
            table.append((key, {}))
        table[-1][1][r["batch"]] = r
    builds = {(r["dataset"], r["index"], r["peer"]): r for r in rows
              if r["target"] == "build"}
    headers = ["dataset", "index", "vs", "recall", *[f"b={b}" for b in batches],
               "build ratio", "jann params", "peer params"]
    body = []
    for (dataset, index, peer, target), cells in table:
        any_cell = next(iter(cells.values()))
        build = builds.get((dataset, index, peer))
        body.append([dataset, index, peer, target, *[
            (f"{cells[b]['ratio']:.2f}x" if cells.get(b) and cells[b]["ratio"] else "-")
            for b in batches],
            _build_ratio(build),
            any_cell["jann_params"] or "-", any_cell["peer_params"] or "-"])
    lines.append(_common.markdown_table(headers, body))
    lines += ["", "## Absolute figures", ""]
    abs_rows = []
    for c in results["cells"]:
        if "error" in c:
            abs_rows.append([c["dataset"], c["index"], c["library"], "error", "", "", "", ""])
            continue
        for target, cell in c["cells"].items():
            qps = ("not reached" if not cell["reached"] else " / ".join(
                f"{cell['batches'][str(b)]['qps']:,.0f}" for b in batches
                if str(b) in cell["batches"]))
            first = ("" if not cell["reached"] else
                     f"{max(v['first_call_s'] for v in cell['batches'].values()):.2f}")
            abs_rows.append([
                c["dataset"], c["index"], c["library"], target,
                f"{cell.get('recall', cell.get('best_recall', 0)):.3f}", qps,
                f"{c['build']['seconds']:.1f}" + _compile_part(c["build"]),
                f"{c['build']['peak_rss'] / 2**20:,.0f}",
                first])
    lines.append(_common.markdown_table(
        ["dataset", "index", "library", "target", "recall@10",
         "QPS at b=" + "/".join(map(str, batches)), "build s", "peak RSS MiB",
         "first call s (max)"], abs_rows))
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in ratio_rows(results) if r["target"] != "build" and r["ratio"]]
    series = {}
    for r in rows:
        series.setdefault((r["dataset"], r["index"], r["peer"], r["target"]), []).append(
            (r["batch"], r["ratio"]))
    datasets = sorted({key[0] for key in series})
    # one colour per index kind (Flat, IVF-Flat, ...), whatever a dataset's nlist or M
    colors = {rank: plt.cm.tab10(rank) for rank in range(5)}
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 5),
                             sharey=True, squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for (name, index, peer, target), points in sorted(series.items()):
            if name != dataset:
                continue
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                    color=colors[_index_kind(index)], label=f"{index} vs {peer} @{target}")
        ax.axhline(1.0, color="black", lw=1)
        ax.axhline(0.5, color="gray", lw=1, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("queries per call")
        ax.set_title(dataset, fontsize=10)
        ax.legend(fontsize=6, loc="lower right")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("jann QPS / peer QPS (same recall)")
    fig.suptitle(f"jann speed matrix, {results['threads']} threads")
    _common.save_figure(fig, axes[0][-1], path)


def _index_kind(index: str) -> int:
    """Plot order of an index: Flat, IVF-Flat, IVF-SQ, IVF-PQ, graph."""
    for rank, marker in enumerate((",Flat", ",SQ", ",PQ", "HNSW")):
        if marker in index:
            return rank + 1
    return 0


def write_reports(results: dict, json_path: Path) -> str:
    return _common.write_markdown_and_plot(results, json_path, markdown, plot)


if __name__ == "__main__":
    if "--child" in sys.argv[1:]:
        print(json.dumps(child_main(sys.argv[1:]), default=_common.json_default))
    else:
        main()
