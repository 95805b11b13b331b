"""Streaming adds: the cost of adding one vector at a time to an index of N rows, jann
beside faiss-cpu (hnswlib for the graph), same process.

Run from the repo root (2 threads for every library):

    python -m benchmarks.streaming_add [--sizes 10000 200000 1000000] [--indexes Flat ...]

For each index and N, both libraries hold the first N rows of --dataset (trained on the
first --train rows; N at most the set's size less the rows to add, so "1000000" is
999,880 on a 1M set); then --adds single-row adds of the next rows are timed one by one
(median, after --warmup untimed ones). jann is timed three ways:
- "copy":   `ix = jann.add(ix, row)`, the functional default (the given index stays
  valid, so its buffers are copied: O(N) per add);
- "donate": `ix = jann.add(ix, row, donate=True)` (its buffers handed over, updated in
  place; the checks, padding and capacity growth of `jann.add` kept);
- "jit":    `add = jax.jit(jann.add, donate_argnums=0)` after `jann.reserve(ix, adds)`,
  one compiled call per row (no host-side checks);
- "facade": `ix.add(row)` on `jann.Index(state)`, which checks the row and stages it on
  the host; the staged rows are written by one `jann.add` at the next read ("facade
  flush ms": `ix.ntotal` after the --adds rows, timed apart; "facade per row" is the
  mean of the adds plus that flush over the rows).
Each row's result is waited for (block_until_ready) before the next add.

An IVF index keeps up to T recent rows unsorted (its tail, `jann.ivf.tail`) and merges
them into its sorted lists on the add that would overflow it: that add ("merge ms") is
timed apart, and "amortized ms" = ((T - 1) x jit median + merge) / T is the mean cost of
a long stream of jitted 1-row adds.

Writes <out>/streaming-add.json, .md and .png (streaming-add-<dataset>.* for another
--dataset).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks import _common

INDEXES = ("Flat", "IVF1024,Flat", "IVF1024,PQ16", "HNSW32")
SIZES = (10_000, 50_000, 200_000, 1_000_000)
# The graph is built row by row by both libraries (minutes per 100k rows on 2 cores for
# jann's): measured up to this size unless asked for more.
GRAPH_MAX = 50_000


def _load(name: str, data_dir: Path, rows: int) -> np.ndarray:
    base = np.load(data_dir / name / "base.npy", mmap_mode="r")
    return np.ascontiguousarray(base[:rows], np.float32)


def _median_ms(step, rows: np.ndarray, warmup: int) -> float:
    times = []
    for i, row in enumerate(rows):
        start = time.perf_counter()
        step(row[None])
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _jann_times(jax, jann, index, new_rows, warmup) -> dict:
    out = _facade_times(jax, jann, jax.tree.map(lambda a: a.copy(), index), new_rows, warmup)
    state = {"ix": jann.reserve(index, 3 * len(new_rows))}

    def copy(row):
        state["ix"] = jax.block_until_ready(jann.add(state["ix"], row))

    def donate(row):
        state["ix"] = jax.block_until_ready(jann.add(state["ix"], row, donate=True))

    compiled = jax.jit(jann.add, donate_argnums=0)

    def jitted(row):
        state["ix"] = jax.block_until_ready(compiled(state["ix"], row))

    for name, step in (("copy", copy), ("donate", donate), ("jit", jitted)):
        out[name] = _median_ms(step, new_rows, warmup)
    jann.check(state["ix"])
    expected = jann.ntotal(index) + 3 * len(new_rows)
    if jann.ntotal(state["ix"]) != expected:
        raise AssertionError(f"jann holds {jann.ntotal(state['ix'])} rows, not {expected}")
    out.update(_merge_times(jax, jann, state["ix"], compiled, new_rows[0][None], out["jit"]))
    return out


def _facade_times(jax, jann, index, new_rows, warmup) -> dict:
    """Single-row adds through the object facade (staged), and the write at the next read."""
    ix = jann.Index(jann.reserve(index, 2 * len(new_rows)))
    for round_ in range(2):  # the first round compiles the flush's add program
        times = []
        for row in new_rows:
            start = time.perf_counter()
            ix.add(row[None])
            times.append(time.perf_counter() - start)
        start = time.perf_counter()
        jax.block_until_ready(ix.state)
        flush = time.perf_counter() - start
    return {"facade": 1e3 * statistics.median(times[warmup:]), "facade_flush": 1e3 * flush,
            "facade_per_row": 1e3 * (sum(times) + flush) / len(times)}


def _tail_size(index) -> int:
    """Rows an IVF index keeps unsorted before a merge (0: none, or not IVF)."""
    from jann.ivf.tail import tail_size  # after the thread limits are set
    return tail_size(index) if hasattr(index, "tail_lists") else 0


def _merge_times(jax, jann, index, compiled, row, jit_ms) -> dict:
    """The add that overflows an IVF index's tail (it merges every row), and the mean
    cost per row of a stream of adds that pays it once per tail size."""
    size = _tail_size(index)
    if not size:
        return {"amortized": jit_ms}
    index = jann.reserve(index, size + 2)
    for _ in range(size - (int(index.count) - int(index.offsets[-1]))):  # fill the tail
        index = compiled(index, row)
    jax.block_until_ready(compiled(jax.tree.map(lambda a: a.copy(), index), row))
    start = time.perf_counter()
    index = jax.block_until_ready(compiled(index, row))
    merge_ms = 1e3 * (time.perf_counter() - start)
    if int(index.count) != int(index.offsets[-1]):
        raise AssertionError("the add past a full tail did not merge it")
    return {"merge": merge_ms, "amortized": ((size - 1) * jit_ms + merge_ms) / size}


def _peer(spec: str, x: np.ndarray, n: int, train: int, faiss, hnswlib):
    """(peer name, add-one-row function) holding the first n rows."""
    if spec.startswith("HNSW"):
        graph = hnswlib.Index(space="l2", dim=x.shape[1])
        graph.init_index(max_elements=n + 4096, M=int(spec[4:]), ef_construction=40)
        graph.add_items(x[:n], np.arange(n))
        counter = [n]

        def add(row):
            graph.add_items(row, [counter[0]])
            counter[0] += 1
        return "hnswlib", add
    index = faiss.index_factory(x.shape[1], spec)
    index.train(x[:train])
    index.add(x[:n])
    return "faiss", index.add


def bench(spec: str, n: int, x: np.ndarray, args, jax, jann, faiss, hnswlib) -> dict:
    train = min(args.train, n)
    start = time.perf_counter()
    index = jann.train(jann.index_factory(x.shape[1], spec), x[:train], key=0)
    index = jax.block_until_ready(jann.add(index, x[:n]))
    build_s = time.perf_counter() - start
    new_rows = x[n:n + args.adds]
    ours = _jann_times(jax, jann, index, new_rows, args.warmup)
    peer, add_one = _peer(spec, x, n, train, faiss, hnswlib)
    theirs = _median_ms(add_one, new_rows, args.warmup)
    tail_rows = _tail_size(index)
    row = {"index": spec, "n": n, "peer": peer, "peer_ms": theirs, "jann_build_s": build_s,
           "tail_rows": tail_rows,
           **{f"jann_{k}_ms": v for k, v in ours.items()},
           **{f"ratio_{k}": v / theirs for k, v in ours.items()}}
    print(json.dumps(row), flush=True)
    return row


def markdown(results: dict) -> str:
    rows = [[r["index"], r["n"], r["peer"], r["peer_ms"], r["jann_copy_ms"],
             r["jann_donate_ms"], r["jann_jit_ms"], r["jann_amortized_ms"],
             r["jann_facade_ms"], r["jann_facade_per_row_ms"], r["ratio_jit"],
             r["ratio_amortized"], r["ratio_facade"], r["ratio_facade_per_row"]]
            for r in results["runs"]]
    return ("# Streaming adds: one row per call (median ms)\n\n"
            f"{results['dataset']}, {results['threads']['requested']} threads, "
            f"{results['machine'].get('cpu', '')}\n\n" + _common.markdown_table(
                ["index", "N", "peer", "peer ms", "copy ms", "donate ms", "jit ms",
                 "jit amortized ms", "facade ms", "facade per row ms", "jit / peer",
                 "jit amortized / peer", "facade / peer", "facade per row / peer"], rows)
            + "\n\njit amortized: with the merge of a full IVF tail (once per tail size); "
            "facade per row: the adds plus the write at the next read, over the rows.\n")


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for spec in dict.fromkeys(r["index"] for r in results["runs"]):
        runs = [r for r in results["runs"] if r["index"] == spec]
        n = [r["n"] for r in runs]
        line, = ax.plot(n, [r["jann_donate_ms"] for r in runs], "o-", label=f"jann {spec}")
        ax.plot(n, [r["peer_ms"] for r in runs], "s--", color=line.get_color(),
                label=f"{runs[0]['peer']} {spec}")
    _common.save_log_log(fig, ax, path, "rows in the index",
                         "ms per single-row add (jann: donate=True)")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="sift-textures-1m")
    p.add_argument("--indexes", nargs="+", default=list(INDEXES))
    p.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    p.add_argument("--graph-max", type=int, default=GRAPH_MAX)
    p.add_argument("--adds", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--train", type=int, default=50_000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", type=Path, default=_common.REPO_ROOT.parent / "shared" / "data")
    p.add_argument("--out", type=Path, default=_common.REPO_ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    threads = _common.limit_threads(args.threads)
    import faiss
    import hnswlib
    import jax

    import jann
    faiss.omp_set_num_threads(args.threads)
    x = _load(args.dataset, args.data_dir, max(args.sizes) + 3 * args.adds)
    results = {"machine": _common.machine_info(), "threads": threads,
               "dataset": args.dataset, "runs": []}
    spare = 3 * args.adds  # the rows added one by one come after the N held
    for spec in args.indexes:
        for n in sorted({min(n, len(x) - spare) for n in args.sizes}):
            if spec.startswith("HNSW") and n > args.graph_max:
                continue
            results["runs"].append(bench(spec, n, x, args, jax, jann, faiss, hnswlib))
    name = "streaming-add" + (f"-{args.dataset}" if args.dataset != "sift-textures-1m" else "")
    path = _common.write_json(args.out / f"{name}.json", results)
    print(_common.write_markdown_and_plot(results, path, markdown, plot))


if __name__ == "__main__":
    main()
