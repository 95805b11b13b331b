"""Benchmark runner: recall-QPS sweeps of jann, faiss-cpu and hnswlib on one dataset.

Run from the repo root:

    python -m benchmarks.run --dataset fashion-mnist \\
        --methods jann:Flat jann:IVF1024,Flat faiss:IVF1024,Flat hnswlib:M=16,efc=200 --k 10

--dataset: a name under ../shared/data (a folder of base.npy / queries.npy [gt_ids.npy],
or NAME.hdf5), "embedded" (the Fashion-MNIST 14x14 subset shipped in jann), or a path
that `jann.io.load_dataset` reads: an ann-benchmarks .hdf5 file, a folder of
.npy files or of an fvecs/ivecs triple (base.fvecs, query.fvecs[, groundtruth.ivecs]).
Data are cast to float32; "cosine" data are L2-normalised and searched with inner product.
Ground truth: the file's when it has enough neighbours per query, else exact top-100 by
`jann.knn` (float32, exact), cached in --cache-dir under a hash of the vectors.

--methods: `jann:<factory string>`, `faiss:<factory string>` (the same grammar), and
`hnswlib:M=<M>,efc=<ef_construction>`. A library that is not installed is reported in the
outputs and skipped, not a crash. Each method is built once (time, peak RSS, index bytes;
jann's build includes XLA compilation), then its search parameters are swept over the
space `jann.search_parameter_space` gives for the same factory string (faiss: nprobe,
k_factor_rf, efSearch from the built index; hnswlib: ef), explored as FAISS's
ParameterSpace does (settings whose best possible outcome is already dominated are
skipped; --no-prune measures all). `--params nprobe=1,4,16` restricts a parameter.

Each setting: all queries in one call; the first call (compilation, caches) is reported
apart as warm-up; QPS from the best of --repeats calls (results blocked on and on the
host); recall@1 / @k from that result; recall@100 (--recall-at) from one more untimed
search with k=100. Threads: --threads CPUs for every library (`_common.limit_threads`).

Writes <out>/run_<dataset>.json (everything, with machine and versions), run_<dataset>.md
(tables) and run_<dataset>.png (recall-QPS Pareto frontiers, log QPS, ann-benchmarks
style). `python -m benchmarks.readme_results` puts the Markdown and plot in the README.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

from benchmarks import _common

SHARED_DATA = _common.REPO_ROOT.parent / "shared" / "data"
DEFAULT_METHODS = ("jann:Flat", "jann:IVF1024,Flat", "faiss:IVF1024,Flat",
                   "hnswlib:M=16,efc=200")
# Parameter names that mean the same knob in different libraries (for --params).
ALIASES = {"k_factor": ("k_factor", "k_factor_rf"), "ef": ("ef", "efSearch")}


# ------------------------------------------------------------------------- arguments
def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.splitlines()[0],
        epilog="See the module docstring (benchmarks/run.py) for the measurement details.")
    p.add_argument("--dataset", default="fashion-mnist", help="NAME or PATH")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                   metavar="LIB:CONFIG")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--recall-at", type=int, nargs="+", default=[1, 10, 100], metavar="K",
                   help="recall depths reported per setting (k itself is always included)")
    p.add_argument("--target", type=float, default=0.95, help="recall@k target")
    p.add_argument("--params", nargs="*", default=[], metavar="NAME=V1,V2",
                   help="restrict a search parameter (any method that has it)")
    p.add_argument("--queries", type=int, default=None, help="use the first N queries")
    p.add_argument("--metric", choices=("l2", "ip", "cosine"), default=None,
                   help="override the dataset's metric (default: the file's, else l2)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="timed calls per setting")
    p.add_argument("--build-repeats", type=int, default=1,
                   help="builds per method; with 2+, the first (compiling) one is apart")
    p.add_argument("--no-prune", action="store_true", help="measure every setting")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--render", metavar="JSON", default=None,
                   help="only rewrite the .md and .png of an earlier run from its JSON")
    p.add_argument("--out", default=str(_common.REPO_ROOT / "benchmarks" / "results"))
    p.add_argument("--cache-dir", default=str(Path(os.environ.get(
        "XDG_CACHE_HOME", Path.home() / ".cache")) / "jann" / "benchmarks"),
                   help="where computed ground truth is kept")
    args = p.parse_args(argv)
    for name, value in (("--k", args.k), ("--threads", args.threads),
                        ("--repeats", args.repeats), ("--build-repeats", args.build_repeats)):
        if value < 1:
            p.error(f"{name} must be >= 1, got {value}")
    if args.queries is not None and args.queries < 1:
        p.error(f"--queries must be >= 1, got {args.queries}")
    if not 0 < args.target <= 1:
        p.error(f"--target must be in (0, 1], got {args.target}")
    try:
        args.methods = [parse_method(m) for m in args.methods]
        args.params = parse_params(args.params)
    except ValueError as e:
        p.error(str(e))
    args.recall_at = sorted({*(r for r in args.recall_at if r > 0), args.k})
    return args


@dataclasses.dataclass(frozen=True)
class Method:
    spec: str      # as given, e.g. "jann:IVF1024,Flat"
    library: str   # jann | faiss | hnswlib
    config: str    # the factory string, or hnswlib's "M=..,efc=.."


def parse_method(spec: str) -> Method:
    library, sep, config = spec.partition(":")
    if not sep or library not in LIBRARIES or not config.strip():
        raise ValueError(f"method {spec!r}: expected LIB:CONFIG with LIB one of "
                         f"{', '.join(LIBRARIES)} (e.g. jann:IVF1024,Flat, "
                         "hnswlib:M=16,efc=200)")
    if library == "hnswlib":
        HnswlibMethod.parse_config(config)
    return Method(spec, library, config.strip())


def parse_params(items) -> dict[str, tuple]:
    out = {}
    for item in items:
        name, sep, values = item.partition("=")
        try:
            parsed = tuple(float(v) if "." in v else int(v) for v in values.split(","))
        except ValueError:
            parsed = ()
        if not sep or not name or not parsed:
            raise ValueError(f"--params {item!r}: expected NAME=V1,V2,... with numbers")
        out[name] = parsed
    return out


def restrict(space: dict, overrides: dict) -> dict:
    """`space` with the values of any parameter named in overrides (or an alias); nprobe
    values above the method's nlist are dropped, so one --params fits several nlists."""
    out = dict(space)
    for name, values in overrides.items():
        for alias in ALIASES.get(name, (name,)):
            if alias in out:
                limit = max(out[alias]) if alias == "nprobe" else None
                out[alias] = tuple(v for v in values if limit is None or v <= limit) or \
                    (limit,)
    return out


# ------------------------------------------------------------------------- data
@dataclasses.dataclass
class Dataset:
    name: str
    source: str
    xb: np.ndarray
    xq: np.ndarray
    gt: np.ndarray
    metric: str         # what the libraries are asked for: l2 or ip
    data_metric: str    # the dataset's own (cosine is searched as ip on normalised data)
    gt_source: str


def resolve_dataset(name_or_path: str) -> tuple[str, dict, str]:
    """(name, jann.io.load_dataset-style dict, where it came from)."""
    from jann import datasets, io
    if name_or_path in ("embedded", "fashion-mnist-14x14"):
        data = datasets.load_embedded()
        return "fashion-mnist-14x14", {**data, "gt_ids": None, "gt_dist": None}, \
            "jann.datasets.load_embedded()"
    path = Path(name_or_path)
    if not path.exists():
        for candidate in (SHARED_DATA / name_or_path, SHARED_DATA / f"{name_or_path}.hdf5"):
            if candidate.exists():
                path = candidate
                break
        else:
            known = sorted(p.name for p in SHARED_DATA.iterdir()) if SHARED_DATA.is_dir() else []
            raise SystemExit(f"dataset {name_or_path!r}: no such path, nor a dataset in "
                             f"{SHARED_DATA} (there: {', '.join(known) or 'nothing'}), nor "
                             "'embedded'")
    name = path.stem if path.is_file() else path.name
    return name, io.load_dataset(path), str(path)


def load_data(args, progress: _common.Progress) -> Dataset:
    name, data, source = resolve_dataset(args.dataset)
    if data["queries"] is None:
        raise SystemExit(f"{source}: no query vectors (a single file holds the base only); "
                         "use a folder or an .hdf5 file with queries")
    data_metric = args.metric or data["metric"] or "l2"
    if data_metric not in ("l2", "ip", "cosine"):
        raise SystemExit(f"{source}: metric {data_metric!r} is not one of l2, ip, cosine")
    xb = np.ascontiguousarray(data["base"], np.float32)
    xq = np.ascontiguousarray(data["queries"][:args.queries], np.float32)
    if xb.shape[1] != xq.shape[1]:
        raise SystemExit(f"{source}: base is {xb.shape[1]}-d but queries are {xq.shape[1]}-d")
    metric = data_metric
    if data_metric == "cosine":
        xb /= np.maximum(np.linalg.norm(xb, axis=1, keepdims=True), 1e-30)
        xq /= np.maximum(np.linalg.norm(xq, axis=1, keepdims=True), 1e-30)
        metric = "ip"
    depth = min(max(args.recall_at), len(xb))
    gt = data["gt_ids"]
    file_metric_ok = args.metric is None or args.metric == (data["metric"] or "l2")
    if gt is not None and gt.shape[1] >= depth and gt.shape[0] >= len(xq) and file_metric_ok:
        gt, gt_source = np.asarray(gt[:len(xq), :depth]), "from the dataset files"
    else:
        gt, gt_source = cached_ground_truth(xb, xq, depth, metric, Path(args.cache_dir),
                                            progress)
    return Dataset(name, source, xb, xq, gt, metric, data_metric, gt_source)


def cached_ground_truth(xb, xq, depth: int, metric: str, cache_dir: Path,
                        progress: _common.Progress) -> tuple[np.ndarray, str]:
    """Exact top-`depth` ids of xq in xb, computed once per (vectors, metric, depth)."""
    h = hashlib.sha256()
    for part in (metric.encode(), str(depth).encode(), str(xb.shape).encode(), xb.tobytes(),
                 str(xq.shape).encode(), xq.tobytes()):
        h.update(part)
    path = cache_dir / f"gt_{h.hexdigest()[:24]}.npy"
    if path.is_file():
        return np.load(path), f"exact (jann.knn), cached at {path}"
    import jax

    import jann
    with progress.task(f"ground truth: exact top-{depth} of {len(xq)} queries"):
        ids = np.asarray(jax.block_until_ready(jann.knn(xq, xb, depth, metric=metric)[1]))
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename: an interrupted run never leaves a truncated cache file behind.
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, ids)
    tmp.replace(path)
    return ids, f"exact (jann.knn), computed and cached at {path}"


# ------------------------------------------------------------------------- libraries
class JannMethod:
    library = "jann"
    build_includes_compile = True

    def __init__(self, config: str, d: int, metric: str, threads: int, seed: int):
        import jann
        self.empty = jann.index_factory(d, config, metric=metric)  # raises on a bad string
        self.seed = seed
        self.index = None

    @staticmethod
    def version():
        import jann
        return jann.__version__

    def build(self, xb):
        import jax

        import jann

        from benchmarks._common import CompileClock
        with CompileClock() as clock:
            index = jann.train(self.empty, xb, key=jax.random.key(self.seed))
            index = jann.shrink_to_fit(jann.add(index, xb))
            self.index = jax.block_until_ready(index)
        self.compile_s = clock.seconds

    def space(self, k: int) -> dict:
        import jann
        return jann.search_parameter_space(self.index)

    def search(self, xq, k: int, params: dict):
        import jax

        import jann
        return np.asarray(jax.block_until_ready(jann.search(self.index, xq, k, **params)[1]))

    def index_bytes(self) -> int:
        import jax
        return sum(leaf.nbytes for leaf in jax.tree.leaves(self.index))


class FaissMethod:
    library = "faiss"
    build_includes_compile = False

    def __init__(self, config: str, d: int, metric: str, threads: int, seed: int):
        import faiss
        faiss.omp_set_num_threads(threads)
        self.faiss, self.config, self.d = faiss, config, d
        self.metric = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
        self.index = faiss.index_factory(d, config, self.metric)  # raises on a bad string
        self.seed = seed

    @staticmethod
    def version():
        import faiss
        return faiss.__version__

    def build(self, xb):
        faiss = self.faiss
        self.index = faiss.index_factory(self.d, self.config, self.metric)
        ivf = faiss.try_extract_index_ivf(self.index)
        if ivf is not None:
            ivf.cp.seed = self.seed
        if not self.index.is_trained:
            self.index.train(xb)
        self.index.add(xb)

    def space(self, k: int) -> dict:
        from jann.autotune import GRAPH_EF_VALUES, K_FACTOR_VALUES, nprobe_values
        faiss = self.faiss
        space, index = {}, faiss.downcast_index(self.index)
        refine = None
        if isinstance(index, faiss.IndexRefine):
            refine, index = {"k_factor_rf": K_FACTOR_VALUES}, faiss.downcast_index(
                index.base_index)
        if isinstance(index, faiss.IndexPreTransform):
            index = faiss.downcast_index(index.index)
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None and ivf.nlist > 1:
            space["nprobe"] = nprobe_values(ivf.nlist)
        if isinstance(index, faiss.IndexHNSW):
            space["efSearch"] = tuple(v for v in GRAPH_EF_VALUES if v >= k) or (k,)
        return {**space, **(refine or {})}

    def search(self, xq, k: int, params: dict):
        space = self.faiss.ParameterSpace()
        for name, value in params.items():
            space.set_index_parameter(self.index, name, value)
        return self.index.search(xq, k)[1]

    def index_bytes(self) -> int:
        return int(self.faiss.serialize_index(self.index).nbytes)


class HnswlibMethod:
    library = "hnswlib"
    build_includes_compile = False

    def __init__(self, config: str, d: int, metric: str, threads: int, seed: int):
        import hnswlib
        self.hnswlib, self.d, self.threads, self.seed = hnswlib, d, threads, seed
        self.space_name = "ip" if metric == "ip" else "l2"
        self.M, self.efc = self.parse_config(config)
        self.index = None

    @staticmethod
    def parse_config(config: str) -> tuple[int, int]:
        values = {"M": 16, "efc": 200}
        for item in filter(None, config.split(",")):
            name, sep, value = item.partition("=")
            if not sep or name not in values or not value.isdigit() or int(value) < 1:
                raise ValueError(f"hnswlib config {config!r}: expected M=<int>,efc=<int>")
            values[name] = int(value)
        return values["M"], values["efc"]

    @staticmethod
    def version():
        from importlib import metadata
        return metadata.version("hnswlib")

    def build(self, xb):
        index = self.hnswlib.Index(space=self.space_name, dim=self.d)
        index.init_index(max_elements=len(xb), ef_construction=self.efc, M=self.M,
                         random_seed=self.seed)
        index.set_num_threads(self.threads)
        index.add_items(xb, np.arange(len(xb)))
        self.index = index

    def space(self, k: int) -> dict:
        from jann.autotune import GRAPH_EF_VALUES
        return {"ef": tuple(v for v in GRAPH_EF_VALUES if v >= k) or (k,)}

    def search(self, xq, k: int, params: dict):
        self.index.set_ef(int(params["ef"]))
        return self.index.knn_query(xq, k=k)[0].astype(np.int64)

    def index_bytes(self) -> int:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "index.bin")
            self.index.save_index(path)
            return os.path.getsize(path)


LIBRARIES = {"jann": JannMethod, "faiss": FaissMethod, "hnswlib": HnswlibMethod}


# ------------------------------------------------------------------------- running
def fmt_params(params: dict) -> str:
    return ", ".join(f"{n}={v}" for n, v in params.items()) or "-"


def build(runner, data: Dataset, repeats: int, progress, spec: str) -> dict:
    runs = []
    for i in range(repeats):
        label = f"build {spec}" + (f" ({i + 1}/{repeats})" if repeats > 1 else "")
        with progress.task(label):
            _, tracked = _common.run_tracked(lambda: runner.build(data.xb))
        runs.append(tracked)
    best = min(runs, key=lambda r: r["seconds"])
    out = {"seconds": best["seconds"], "runs_s": [r["seconds"] for r in runs],
           "first_s": runs[0]["seconds"], "includes_compile": runner.build_includes_compile
           and repeats == 1, "first_compile_s": getattr(runner, "compile_s", None), "rss_before": runs[-1]["rss_before"],
           "peak_rss": max(r["peak_rss"] for r in runs), "rss_after": runs[-1]["rss_after"],
           "others_cpu": [r["others_cpu"] for r in runs]}
    return out


def sweep(runner, data: Dataset, args, progress, spec: str):
    """Explore the method's parameter space; returns an AutotuneResult."""
    from jann.autotune import OperatingPoint, explore, recall_at_k
    k, nq = args.k, len(data.xq)
    extra_depths = [r for r in args.recall_at if r > k]
    space = restrict(runner.space(k), args.params)

    def measure(params):
        ids, timing = _common.time_best_of(lambda: runner.search(data.xq, k, params),
                                           args.repeats)
        metrics = {f"recall@{r}": recall_at_k(ids, data.gt, r)
                   for r in args.recall_at if r <= k}
        for depth in extra_depths:  # untimed: a deeper search only for its recall
            metrics[f"recall@{depth}"] = recall_at_k(
                runner.search(data.xq, min(depth, len(data.xb)), params), data.gt,
                min(depth, len(data.xb)))
        metrics.update(cpu_util=timing["cpu_util"], others_cpu=timing["others_cpu"])
        return OperatingPoint(params=params, recall=metrics[f"recall@{k}"],
                              qps=nq / timing["best_s"], seconds=timing["best_s"],
                              warmup_s=timing["first_s"], runs_s=tuple(timing["runs_s"]),
                              metrics=metrics)

    def report(i, n, params, point):
        if point is None:
            progress.update(f"  [{i}/{n}] {spec} {fmt_params(params)}: skipped (dominated)")
        else:
            progress.update(f"  [{i}/{n}] {spec} {fmt_params(params)}: "
                            f"recall@{k}={point.recall:.4f} QPS={point.qps:,.0f} "
                            f"(warm-up {point.warmup_s:.2f} s)")

    return space, explore(space, measure, target_recall=args.target, k=k,
                          prune=not args.no_prune, seed=args.seed, progress=report)


def run_method(method: Method, data: Dataset, args, progress) -> dict:
    cls = LIBRARIES[method.library]
    try:
        runner = cls(method.config, data.xb.shape[1], data.metric, args.threads, args.seed)
    except ImportError as e:
        progress.line(f"{method.spec}: skipped, {method.library} is not installed ({e})")
        return {"library": method.library, "config": method.config, "status": "missing",
                "reason": f"{method.library} is not installed: {e}"}
    out = {"library": method.library, "config": method.config, "version": cls.version(),
           "status": "ok"}
    start = time.perf_counter()
    try:
        out["build"] = build(runner, data, args.build_repeats, progress, method.spec)
        out["index_bytes"] = runner.index_bytes()
        space, result = sweep(runner, data, args, progress, method.spec)
    except Exception as e:  # one failing method must not cost the others' results
        reason = f"{type(e).__name__}: {e}"
        progress.line(f"{method.spec}: failed, {reason}")
        return {**out, "status": "error", "reason": reason,
                "traceback": traceback.format_exc()[-4000:]}
    out["space"] = {name: list(values) for name, values in space.items()}
    out["result"] = result.as_dict()
    out["method_s"] = time.perf_counter() - start
    best = result.best
    progress.line(f"{method.spec}: " + (
        f"fastest at recall@{args.k} >= {args.target}: {fmt_params(best.params)} "
        f"({best.qps:,.0f} QPS)" if best else
        f"no setting reaches recall@{args.k} >= {args.target} (best "
        f"{result.best_recall.recall:.4f})"))
    return out


def check_methods(methods, data: Dataset, args):
    """Construct every method's empty index first, so a typo fails before any build."""
    for method in methods:
        try:
            LIBRARIES[method.library](method.config, data.xb.shape[1], data.metric,
                                      args.threads, args.seed)
        except ImportError:
            pass  # reported when its turn comes
        except Exception as e:
            raise SystemExit(f"method {method.spec!r}: {type(e).__name__}: {e}") from e


# ------------------------------------------------------------------------- outputs
def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "dataset"


def markdown(results: dict) -> str:
    k, target = results["k"], results["target_recall"]
    depths = results["recall_at"]
    summary, frontier, absent = [], [], []
    for spec, res in results["methods"].items():
        if res["status"] != "ok":
            absent.append(f"- `{spec}`: not run ({res['reason']})")
            continue
        r = res["result"]
        best, top = r["best"], r["frontier"][-1]
        summary.append([
            f"`{spec}`", res["build"]["seconds"], res["index_bytes"] / 2**20,
            f"{len(r['points'])} (+{len(r['skipped'])} skipped)",
            best["qps"] if best else "-", fmt_params(best["params"]) if best else "-",
            top["recall"], max(p["qps"] for p in r["points"]),
            max(p["warmup_s"] for p in r["points"]),
            float(np.median([p["others_cpu"] for p in r["points"]]))])
        for p in r["frontier"]:
            frontier.append([f"`{spec}`", fmt_params(p["params"]),
                             *[p.get(f"recall@{d}", "-") for d in depths], p["qps"],
                             p["warmup_s"]])
    ds = results["dataset"]
    text = [f"## Benchmark runner: {ds['name']} ({ds['nb']} x {ds['d']}, {ds['nq']} queries, "
            f"{ds['data_metric']}, k={k}, {results['threads']} threads)", ""]
    text.append(_common.markdown_table(
        ["method", "build s", "index MiB", "settings", f"QPS @ recall@{k} >= {target}",
         "at", f"max recall@{k}", "max QPS", "max warm-up s", "others' CPU share"],
        summary))
    text += ["", "Pareto frontier (all queries in one call, best of "
             f"{results['repeats']}; warm-up = first call, compilation included):", ""]
    text.append(_common.markdown_table(
        ["method", "params", *[f"recall@{d}" for d in depths], "QPS", "warm-up s"],
        frontier))
    if absent:
        text += ["", *absent]
    deeper = [d for d in depths if d > k]
    notes = [f"Ground truth {ds['gt_source'].split(',')[0]}.",
             "jann's build time includes XLA compilation." if results["build_repeats"] == 1
             else "Build: best of several builds, the first (compiling) one apart in the JSON."]
    if deeper:
        notes.append(f"recall@{'/@'.join(map(str, deeper))}: from a separate, untimed search "
                     "with that k at the same setting (hnswlib then searches with ef >= k).")
    shares = [p["others_cpu"] for res in results["methods"].values() if res["status"] == "ok"
              for p in res["result"]["points"]]
    if shares and max(shares) > 0.1:
        notes.append(f"Other processes used {min(shares):.0%}-{max(shares):.0%} of the "
                     "machine's CPU during the timed runs (median per method in the table): "
                     "QPS figures and ratios from this run are noisy.")
    notes.append(f"Total run time: {results['total_s']:.0f} s.")
    text += ["", " ".join(notes), ""]
    return "\n".join(text)


def plot(results: dict, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    k = results["k"]
    styles = {"jann": "-", "faiss": "--", "hnswlib": ":"}
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (spec, res) in enumerate(results["methods"].items()):
        if res["status"] != "ok":
            continue
        r, color = res["result"], f"C{i % 10}"
        ax.plot([p["recall"] for p in r["points"]], [p["qps"] for p in r["points"]], "o",
                color=color, alpha=0.25, ms=4)
        ax.plot([p["recall"] for p in r["frontier"]], [p["qps"] for p in r["frontier"]],
                styles.get(res["library"], "-") + "o", color=color, label=spec,
                ms=5 if len(r["frontier"]) > 1 else 9)
    ax.axvline(results["target_recall"], color="grey", lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.set_xlabel(f"recall@{k}")
    ax.set_ylabel("queries per second (log scale)")
    ds = results["dataset"]
    ax.set_title(f"{ds['name']} ({ds['nb']} x {ds['d']}, {ds['data_metric']}), k={k}, "
                 f"{results['threads']} threads; lines: Pareto frontiers")
    if ax.get_legend_handles_labels()[0]:  # every method may have failed or be missing
        ax.legend(fontsize=8, loc="lower left")
    _common.save_figure(fig, ax, path)


def write_reports(results: dict, json_path: Path) -> str:
    return _common.write_markdown_and_plot(results, json_path, markdown, plot)


def main(argv=None):
    args = parse_args(argv)
    if args.render:
        import json
        path = Path(args.render)
        print(write_reports(json.loads(path.read_text()), path))
        return None
    start = time.perf_counter()
    thread_limits = _common.limit_threads(args.threads)
    progress = _common.Progress()
    data = load_data(args, progress)
    check_methods(args.methods, data, args)
    progress.line(f"dataset {data.name}: {data.xb.shape[0]} x {data.xb.shape[1]}, "
                  f"{len(data.xq)} queries, {data.data_metric}; ground truth {data.gt_source}")
    results = {
        "machine": _common.machine_info(), "threads": args.threads,
        "thread_limits": thread_limits, "argv": sys.argv[1:] if argv is None else list(argv),
        "dataset": {"name": data.name, "source": data.source, "nb": len(data.xb),
                    "nq": len(data.xq), "d": data.xb.shape[1], "metric": data.metric,
                    "data_metric": data.data_metric, "gt_source": data.gt_source},
        "k": args.k, "recall_at": args.recall_at, "target_recall": args.target,
        "repeats": args.repeats, "build_repeats": args.build_repeats,
        "params_override": {n: list(v) for n, v in args.params.items()},
        "prune": not args.no_prune, "methods": {}}
    for i, method in enumerate(args.methods):
        progress.line(f"[{i + 1}/{len(args.methods)}] {method.spec}")
        results["methods"][method.spec] = run_method(method, data, args, progress)
    results["total_s"] = time.perf_counter() - start
    out, stem = Path(args.out), f"run_{slug(data.name)}"
    md = write_reports(results, _common.write_json(out / f"{stem}.json", results))
    progress.line(f"wrote {out / stem}.json, .md, .png")
    print(md)
    return results


if __name__ == "__main__":
    main()
