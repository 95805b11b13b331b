"""The write that doubles an index's capacity under `jann serve`: how long it blocks writes,
with the next capacity compiled ahead in the background (the server's behaviour) and
without (GROW_AHEAD_FILL disabled, as before).

Run from the repo root:  python -m benchmarks.serve_growth  [--data ../shared/data/sift-textures]

What is measured and how
1. For each index (Flat, IVF256,Flat) over the dataset's first rows (sift-textures, 128-d
   SIFT descriptors, when ../shared/data is there; else the embedded Fashion-MNIST set), a
   checkpoint half full (capacity about twice its rows) is loaded by the server's own
   `load_service` (no HTTP; warm searches of every query bucket, k=10, nprobe=16 for IVF).
2. Batches of --rows rows are then written through the server's write path
   (SearchService._write: add, warm, log fsync, swap) one after another, with --pause
   seconds between writes, until the capacity has doubled and 20 more writes passed.
3. Reported per index and mode: the doubling write's time, and the median, p99 and max
   of all writes. The doubling write finds its programs compiled when the background
   compile (seconds) finished before the index filled up; with a faster stream it waits
   for the rest of that compile only.

Writes <out>/serve-growth.json and serve-growth.md (the table, also printed).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import limit_threads, machine_info, write_json


def _data(path: Path) -> tuple[np.ndarray, str]:
    if (path / "base.npy").exists():
        return np.load(path / "base.npy").astype(np.float32), path.name
    from jann import datasets
    return datasets.load_embedded()["base"], "fashion-mnist (embedded, 196-d)"


def measure(description: str, xb: np.ndarray, n0: int, rows: int, pause: float,
            grow_ahead: bool, workdir: Path) -> dict:
    import jann
    from jann.serve import service as service_module
    from jann.serve.config import ServeConfig
    from jann.serve.runner import load_service
    index = jann.index_factory(xb.shape[1], description)
    if not index.is_trained:
        index = jann.train(index, xb[:n0], key=0)
    index = jann.shrink_to_fit(jann.add(index, xb[:n0]))
    index = jann.reserve(index, index.capacity - n0 + 1)       # about half full
    path = workdir / f"{description.replace(',', '_')}-{grow_ahead}"
    shutil.rmtree(path, ignore_errors=True)
    jann.save(index, path)
    saved_fill = service_module.GROW_AHEAD_FILL
    service_module.GROW_AHEAD_FILL = saved_fill if grow_ahead else float("inf")
    try:
        params = (("nprobe", 16),) if "IVF" in description else ()
        service, info = load_service(ServeConfig(str(path), warm_params=params))
        start_capacity, times, doubling, at = index.capacity, [], None, n0
        while doubling is None or len(times) < doubling[0] + 20:
            before = service.current.index.capacity
            t = time.perf_counter()
            service._write("add", xb[at:at + rows], None)
            times.append(time.perf_counter() - t)
            at += rows
            if service.current.index.capacity != before and doubling is None:
                doubling = (len(times) - 1, times[-1])
            time.sleep(pause)
        if service._growing is not None:
            service._growing.exception()
    finally:
        service_module.GROW_AHEAD_FILL = saved_fill
    ms = np.asarray(times) * 1e3
    return {"index": description, "grow_ahead": grow_ahead, "rows_per_write": rows,
            "pause_s": pause, "start_rows": n0, "start_capacity": start_capacity,
            "warm_at_load_s": info["warm_s"], "doubling_write_ms": doubling[1] * 1e3,
            "writes": len(times), "median_ms": float(np.median(ms)),
            "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/sift-textures"))
    parser.add_argument("--indexes", nargs="+", default=["Flat", "IVF256,Flat"])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--pause", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    limit_threads(args.threads)
    xb, data_name = _data(args.data)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for description in args.indexes:
            n0 = 10_000 if description == "Flat" else 20_000
            n0 = min(n0, len(xb) // 3)
            for grow_ahead in (False, True):
                results.append(measure(description, xb, n0, args.rows, args.pause,
                                       grow_ahead, Path(tmp)))
                print(results[-1], flush=True)
    lines = [f"# jann serve: the write that doubles capacity ({data_name}, {args.rows} rows "
             f"per write, {args.pause} s apart, {args.threads} threads)", "",
             "| index | rows -> capacity | next capacity compiled ahead | doubling write ms "
             "| writes median / p99 / max ms |", "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['index']} | {r['start_rows']} -> {r['start_capacity']} | "
                     f"{'yes' if r['grow_ahead'] else 'no (before)'} | "
                     f"{r['doubling_write_ms']:,.0f} | {r['median_ms']:.1f} / "
                     f"{r['p99_ms']:.0f} / {r['max_ms']:,.0f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve-growth.md").write_text("\n".join(lines) + "\n")
    write_json(args.out / "serve-growth.json", {"machine": machine_info(), "results": results})
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
