"""Load test of `jann serve`: N concurrent clients for T seconds, with and without batching.

Run from the repo root:  python -m benchmarks.serve_load  [--clients 8 --seconds 10 ...]

What is measured and how
1. An index (--index, default "Flat") over the embedded Fashion-MNIST set (20000 x 196)
   is built and saved; its 1000 queries are the request pool.
2. For each mode the real server runs in a subprocess on 127.0.0.1 (`jann serve
   CHECKPOINT --port 0`; nothing else is ever contacted) and is warmed; then --clients
   threads of this process, each with its own keep-alive connection (jann.client), send
   one-query searches (k=--k) back to back for --seconds seconds, then stop. Modes:
   - batching: concurrent requests are gathered (up to --max-wait-ms, or --max-batch rows)
     and answered by one compiled search;
   - no-batching: the same server with --no-batching, one search per request.
   Throughput = completed requests / elapsed seconds; latency = client-side time per
   request (p50, p99); batch size = the server's mean requests per compiled search
   (GET /stats). batching gain = batching throughput / no-batching throughput. CPU util
   = CPU seconds / wall seconds of the server process and of the clients (this process);
   others' CPU share = the machine's CPU time used by everything else (other users).
3. Every answer is checked against a direct jann.search of the same index in this process:
   "results equal library" is the share of answers whose ids equal the library's (ties at
   equal distance aside) with distances within 1e-5 relative.
4. Also reported for scale: the library alone in this process, one query per call and the
   whole pool in one call (queries per second).
Clients and server share this machine's CPUs (2 on CI-class machines): the figures are an
end-to-end loopback measurement, not the server's capacity on dedicated hardware.

Writes <out>/serve_load.json (all numbers + machine info) and serve_load.md (the table,
also printed).
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from benchmarks._common import (
    REPO_ROOT, contention, cpu_snapshot, machine_info, markdown_table, write_json)

MODES = {"batching": (), "no-batching": ("--no-batching",)}


def _build(index_string: str, base: np.ndarray, path: Path):
    import jax

    import jann

    index = jann.index_factory(base.shape[1], index_string)
    if not index.is_trained:
        index = jann.train(index, base, key=jax.random.key(0))
    index = jann.add(index, base)
    jann.save(index, path)
    return index


def _library_qps(index, queries, k, params, seconds: float) -> dict:
    """Queries per second of jann.search in this process: one query per call, all at once."""
    import jann

    jann.search(index, queries[:1], k, **params)[0].block_until_ready()     # compile
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        jann.search(index, queries[calls % len(queries)][None], k, **params)[0].block_until_ready()
        calls += 1
    single = calls / (time.perf_counter() - start)
    jann.search(index, queries, k, **params)[0].block_until_ready()
    start = time.perf_counter()
    jann.search(index, queries, k, **params)[0].block_until_ready()
    return {"one_query_per_call_qps": single,
            "all_queries_one_call_qps": len(queries) / (time.perf_counter() - start)}


def _equal(D, I, ref_d, ref_i) -> bool:
    """ids equal the library's wherever the distance is not tied; distances close."""
    if not np.allclose(D, ref_d, rtol=1e-5, atol=1e-5):
        return False
    for col in np.flatnonzero(I[0] != ref_i[0]):
        if np.isclose(ref_d[0], ref_d[0, col], rtol=1e-5, atol=1e-5).sum() < 2:
            return False
    return True


def _load(server, queries, ref_d, ref_i, k, params, clients: int, seconds: float) -> dict:
    """`clients` threads sending one-query searches for `seconds`; per-request timings."""
    latencies = [[] for _ in range(clients)]
    equal = [0] * clients
    errors = []
    client = server.client()                          # one connection per thread
    start_gate = threading.Barrier(clients + 1)

    def run(worker: int):
        start_gate.wait()
        stop_at = time.perf_counter() + seconds
        i = worker
        while time.perf_counter() < stop_at:
            q = i % len(queries)
            t0 = time.perf_counter()
            try:
                D, I = client.search(queries[q:q + 1], k, **params)
            except Exception as exc:                  # report, do not hang the run
                errors.append(repr(exc))
                return
            latencies[worker].append(time.perf_counter() - t0)
            equal[worker] += _equal(D, I, ref_d[q:q + 1], ref_i[q:q + 1])
            i += clients

    threads = [threading.Thread(target=run, args=(w,)) for w in range(clients)]
    for t in threads:
        t.start()
    server_proc = psutil.Process(server.proc.pid)
    before_stats, snap = client.stats(), cpu_snapshot()
    server_cpu = sum(server_proc.cpu_times()[:2])
    start_gate.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    server_cpu = sum(server_proc.cpu_times()[:2]) - server_cpu
    after = cpu_snapshot()
    after["own_s"] += server_cpu                      # the server is ours, not "others"
    others = contention(snap, after)
    client_cpu = after["own_s"] - snap["own_s"] - server_cpu
    stats = client.stats()
    all_lat = np.concatenate([np.asarray(l) for l in latencies]) * 1e3
    n = int(all_lat.size)
    batches = stats["batching"]["batches"] - before_stats["batching"]["batches"]
    batched = stats["batching"]["requests"] - before_stats["batching"]["requests"]
    return {
        "requests": n, "seconds": elapsed, "throughput_rps": n / elapsed,
        "p50_ms": float(np.percentile(all_lat, 50)), "p99_ms": float(np.percentile(all_lat, 99)),
        "mean_ms": float(all_lat.mean()),
        "mean_requests_per_batch": batched / batches if batches else 0.0,
        "results_equal_library": sum(equal) / n if n else 0.0,
        "request_compiles": stats["compiled"]["request_compiles"],
        "server_latency": stats["latency"].get("search", {}),
        "server_cpu_util": server_cpu / elapsed, "client_cpu_util": client_cpu / elapsed,
        "errors": errors[:5], "others_cpu": others["other_processes_cpu_fraction"],
        "loadavg_1min_end": others["loadavg_1min_end"],
    }


def report(results: dict) -> str:
    cfg = results["config"]
    rows = [[mode, r["requests"], round(r["throughput_rps"], 1), r["p50_ms"], r["p99_ms"],
             r["mean_requests_per_batch"], r["results_equal_library"], r["request_compiles"],
             r["server_cpu_util"], r["client_cpu_util"], r["others_cpu"]]
            for mode, r in results["modes"].items()]
    lib = results["library"]
    lines = [
        f"## jann serve under load: {cfg['index']} over {cfg['dataset']} "
        f"({cfg['n']} x {cfg['d']}), {cfg['clients']} clients x {cfg['seconds']:g} s, "
        f"one query per request, k={cfg['k']}",
        "",
        markdown_table(["mode", "requests", "throughput req/s", "p50 ms", "p99 ms",
                        "requests per search", "results equal library",
                        "compiles while serving", "server CPU util", "clients CPU util",
                        "others' CPU share"], rows),
        "",
        f"batching gain (throughput, batching / one search per request): "
        f"**{results['batching_gain']:.2f}x**; p99 latency ratio "
        f"{results['p99_ratio']:.2f}",
        "",
        f"library alone in one process: {lib['one_query_per_call_qps']:.0f} q/s one query "
        f"per call, {lib['all_queries_one_call_qps']:.0f} q/s for {cfg['pool']} queries in "
        "one call",
        "",
        f"server: --max-wait-ms {cfg['max_wait_ms']:g} --max-batch {cfg['max_batch']}; "
        f"clients and server share {results['machine']['cpu_count']} CPUs "
        f"({results['machine']['cpu_model']}), loopback HTTP/JSON",
    ]
    return "\n".join(lines) + "\n"


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0, help="per mode")
    p.add_argument("--index", default="Flat", help="factory string (default: Flat)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="search parameter sent with every request, e.g. nprobe=16")
    p.add_argument("--max-wait-ms", type=float, default=2.0)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    return p.parse_args(argv)


def main(argv=None):
    args = _args(argv)
    from jann import datasets
    from jann.cli import _param

    params = dict(_param(p) for p in args.param)
    data = datasets.load_embedded()
    base, queries = data["base"], data["queries"]
    with tempfile.TemporaryDirectory(prefix="jann-serve-load-") as tmp:
        ckpt = Path(tmp) / "ckpt"
        index = _build(args.index, base, ckpt)
        import jann
        from jann.client import ServerProcess

        ref_d, ref_i = (np.asarray(a) for a in jann.search(index, queries, args.k, **params))
        library = _library_qps(index, queries, args.k, params, min(args.seconds, 3.0))
        del index                                  # free the memory before the servers run
        modes = {}
        for mode, flags in MODES.items():
            server_flags = ["--max-wait-ms", str(args.max_wait_ms), "--max-batch",
                            str(args.max_batch), "--warm-k", str(args.k), *flags]
            server_flags += [f for p in args.param for f in ("--param", p)]
            with ServerProcess(ckpt, *server_flags) as server:
                client = server.client()
                for i in range(4 * args.clients):      # warm connections and caches
                    client.search(queries[i:i + 1], args.k, **params)
                modes[mode] = _load(server, queries, ref_d, ref_i, args.k, params,
                                    args.clients, args.seconds)
            print(f"{mode}: {modes[mode]['throughput_rps']:.1f} req/s, p50 "
                  f"{modes[mode]['p50_ms']:.2f} ms, p99 {modes[mode]['p99_ms']:.2f} ms",
                  flush=True)
    results = {
        "config": {"index": args.index, "dataset": data["name"], "n": int(base.shape[0]),
                   "d": int(base.shape[1]), "pool": int(queries.shape[0]),
                   "clients": args.clients, "seconds": args.seconds, "k": args.k,
                   "params": params, "max_wait_ms": args.max_wait_ms,
                   "max_batch": args.max_batch},
        "modes": modes, "library": library,
        "batching_gain": modes["batching"]["throughput_rps"]
        / max(modes["no-batching"]["throughput_rps"], 1e-9),
        "p99_ratio": modes["batching"]["p99_ms"] / max(modes["no-batching"]["p99_ms"], 1e-9),
        "machine": machine_info(),
    }
    text = report(results)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_load.md").write_text(text)
    write_json(args.out / "serve_load.json", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
