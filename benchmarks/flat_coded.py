"""Flat-coded indexes ("SQ8", "PQ<d/8>": codes in one list, no coarse quantizer) at 1 to
10,000 queries per call: jann beside faiss-cpu, same process, interleaved timings.

Run from the repo root (2 threads for both libraries):

    python -m benchmarks.flat_coded [--datasets sift-textures debian-minilm ...]

For each dataset (../shared/data) and codec, both libraries train on the same first
--train rows and add the whole base; recall@10 against the dataset's exact neighbours.
Batches of 1 and 16 run as a loop of calls over consecutive queries (a service), larger
ones as one call; each timing is the best of --repeats rounds, jann and faiss alternating.
"before": jann with the tiled brute force switched off (`jann.ivf.one_list`), i.e. the
gathered scan up to 256 queries and the list-major scan above, timed at batches up to
--before-max (the list-major scan of one list took seconds per call past that).

Writes <out>/flat-coded.json, .md and .png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from benchmarks import _common

DATASETS = ("sift-textures", "debian-minilm", "fashion-mnist")
CODECS = ("SQ8", "PQd/8")
BATCHES = (1, 16, 256, 2000, 10000)
K = 10


def _load(name: str, data_dir: Path) -> dict:
    folder = data_dir / name
    info = json.loads((folder / "info.json").read_text()) if (folder / "info.json").exists() \
        else {}
    return {"name": name, "metric": info.get("metric", "l2"),
            "xb": np.ascontiguousarray(np.load(folder / "base.npy"), np.float32),
            "xq": np.ascontiguousarray(np.load(folder / "queries.npy"), np.float32),
            "gt": np.load(folder / "gt_ids.npy")[:, :K]}


def _calls(search, xq, batch: int, n_queries: int):
    """A timed body: n_queries queries as calls of `batch` rows (consecutive slices)."""
    starts = range(0, n_queries, batch)

    def run():
        out = None
        for s in starts:
            out = search(xq[s:s + batch])
        return out
    return run


def bench_codec(data: dict, codec: str, args, faiss, jax, jann) -> dict:
    from jann.ivf import one_list
    d = data["xb"].shape[1]
    spec = codec.replace("d/8", str(d // 8))
    xt = data["xb"][: args.train]
    fmetric = faiss.METRIC_INNER_PRODUCT if data["metric"] == "ip" else faiss.METRIC_L2
    ref = faiss.index_factory(d, spec, fmetric)
    if hasattr(ref, "do_polysemous_training"):
        ref.do_polysemous_training = False
    ref.train(xt)
    ref.add(data["xb"])
    index = jann.index_factory(d, spec, metric=data["metric"])
    index = jann.add(jann.train(index, xt, key=jax.random.key(0)), data["xb"])
    jax.block_until_ready(index)

    def ours(q):
        return jax.block_until_ready(jann.search(index, q, K))

    def theirs(q):
        return ref.search(q, K)

    xq = data["xq"]
    recall = {"jann": _common.recall_at_k(np.asarray(ours(xq[:1000])[1]), data["gt"][:1000], K),
              "faiss": _common.recall_at_k(theirs(xq[:1000])[1], data["gt"][:1000], K)}
    out = {"spec": spec, "recall@10": recall, "batches": {}}
    for batch in args.batches:
        n = min(len(xq), max(batch, args.min_queries if batch <= 16 else batch))
        timed = _common.time_interleaved({"jann": _calls(ours, xq, batch, n),
                                          "faiss": _calls(theirs, xq, batch, n)},
                                         args.repeats)
        row = {name: {"qps": n / t["best_s"], "first_s": t["first_s"],
                      "others_cpu": t["others_cpu"]} for name, (_, t) in timed.items()}
        out["batches"][batch] = row
        print(f"[{data['name']} {spec}] batch {batch}: jann {row['jann']['qps']:.0f} QPS, "
              f"faiss {row['faiss']['qps']:.0f} QPS", file=sys.stderr, flush=True)
    # the plan before the tiled scan, for reference
    real = one_list.scans_one_list
    one_list.scans_one_list = lambda index, nq: False
    jax.clear_caches()
    try:
        for batch in [b for b in args.batches if b <= args.before_max]:
            n = min(len(xq), max(batch, args.min_queries if batch <= 16 else batch))
            _, t = _common.time_best_of(_calls(ours, xq, batch, n), args.repeats)
            out["batches"][batch]["before"] = {"qps": n / t["best_s"]}
    finally:
        one_list.scans_one_list = real
        jax.clear_caches()
    return out


def markdown(results: dict) -> str:
    rows = []
    for r in results["runs"]:
        for batch, row in r["batches"].items():
            before = row.get("before", {}).get("qps")
            rows.append([r["dataset"], r["spec"], batch, round(row["jann"]["qps"]),
                         round(row["faiss"]["qps"]), row["jann"]["qps"] / row["faiss"]["qps"],
                         "" if before is None else round(before),
                         "" if before is None else row["jann"]["qps"] / before])
    recalls = [[r["dataset"], r["spec"], r["recall@10"]["jann"], r["recall@10"]["faiss"]]
               for r in results["runs"]]
    return ("# Flat-coded indexes: jann vs faiss-cpu (2 threads)\n\n"
            + _common.markdown_table(["dataset", "index", "recall@10 jann", "faiss"], recalls)
            + "\n\n" + _common.markdown_table(
                ["dataset", "index", "batch", "jann QPS", "faiss QPS", "jann / faiss",
                 "before QPS", "after / before"], rows) + "\n")


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results["runs"]:
        batches = [int(b) for b in r["batches"]]
        ax.plot(batches, [r["batches"][b]["jann"]["qps"] / r["batches"][b]["faiss"]["qps"]
                          for b in r["batches"]], marker="o", label=f"{r['dataset']} {r['spec']}")
    ax.axhline(1.0, color="k", lw=0.8)
    _common.save_log_log(fig, ax, path, "queries per call", "jann / faiss-cpu QPS")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS))
    p.add_argument("--codecs", nargs="+", default=list(CODECS))
    p.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    p.add_argument("--data-dir", type=Path, default=_common.REPO_ROOT.parent / "shared" / "data")
    p.add_argument("--train", type=int, default=50_000)
    p.add_argument("--min-queries", type=int, default=200, help="queries per timing at 1 / 16")
    p.add_argument("--before-max", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=_common.REPO_ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    threads = _common.limit_threads(args.threads)
    import faiss
    import jax

    import jann
    faiss.omp_set_num_threads(args.threads)
    results = {"machine": _common.machine_info(), "threads": threads, "runs": []}
    for name in args.datasets:
        data = _load(name, args.data_dir)
        for codec in args.codecs:
            results["runs"].append({"dataset": name, "metric": data["metric"],
                                    **bench_codec(data, codec, args, faiss, jax, jann)})
    path = _common.write_json(args.out / "flat-coded.json", results)
    print(_common.write_markdown_and_plot(results, path, markdown, plot))


if __name__ == "__main__":
    main()
