"""The `jann` command line: `jann demo` (build, search, check against exact search),
`jann info` (versions and devices) and `jann serve` (an HTTP search service, jann/serve/).

    jann demo                                  # Flat on the embedded Fashion-MNIST set
    jann demo --dataset sift/ --queries 500    # a directory of npy / fvecs, or .hdf5 / .npy
    jann demo --index "Flat(float16)" --k 20
    jann info
    jann serve ckpt/ --port 8000               # ckpt/ written by jann.save
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["main"]

# Metrics the float64 numpy oracle (`datasets.exact_knn`) can check.
_ORACLE_METRICS = ("l2", "ip", "cosine")
# Queries used by default, and held out of the base when a dataset has no queries.
_DEFAULT_QUERIES = 1000
# Tolerances for "equal up to ties" (jann computes in float32, the oracle in float64).
_RTOL = 1e-4
_ATOL_SCALE = 1e-5
_KEY_WIDTH = len("results equal exact search:")


class _UsageError(Exception):
    """A bad argument or input found after parsing: one line on stderr, exit code 2."""


# ------------------------------------------------------------------------------ output
def _line(key: str, value) -> None:
    print(f"{key + ':':<{_KEY_WIDTH}} {value}", flush=True)


def _shape(x) -> str:
    return " x ".join(str(s) for s in x.shape) + f" {np.dtype(x.dtype).name}"


def _seconds(t: float) -> str:
    return f"{t * 1e3:.1f} ms" if t < 1 else f"{t:.2f} s"


# ---------------------------------------------------------------------------- parsing
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _param(text: str) -> tuple[str, object]:
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"expected name=value, got {text!r}")
    raw = raw.strip()
    for convert in (int, float):
        try:
            return name, convert(raw)
        except ValueError:
            pass
    if raw.lower() in ("true", "false"):
        return name, raw.lower() == "true"
    return name, raw


def _parser() -> argparse.ArgumentParser:
    from jann import __version__
    from jann.batching import QUERY_BUCKETS

    parser = argparse.ArgumentParser(
        prog="jann", description="jann: JAX-native vector search.")
    parser.add_argument("--version", action="version", version=f"jann {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="<command>", title="commands")

    demo = commands.add_parser(
        "demo", help="build an index, time searches and check recall against exact search",
        description="Build an index on a dataset (the embedded Fashion-MNIST set by "
                    "default), time a compile (first) and a warm (second) search, and "
                    "compare the results with exact float64 search. Recall counts a "
                    "returned neighbour as a hit when its exact distance is within the "
                    "k-th true distance (so ties count).")
    demo.add_argument("--index", default="Flat", metavar="FACTORY",
                      help='factory string (default: "Flat")')
    demo.add_argument("--dataset", metavar="PATH",
                      help="a directory of npy / fvecs files, or an .hdf5 / .npy / .fvecs "
                           "file (default: the embedded dataset); without queries, the "
                           "last 1000 base rows are the queries")
    demo.add_argument("--k", type=_positive_int, default=10, help="neighbours (default: 10)")
    demo.add_argument("--queries", type=_positive_int, metavar="N",
                      help="use the first N queries (default: all, at most 1000)")
    demo.add_argument("--metric",
                      help="l2, ip or cosine (default: the dataset's metric, else l2)")
    demo.add_argument("--backend", choices=("auto", "xla", "pallas"),
                      help="scan backend (default: JANN_BACKEND, else auto)")
    demo.add_argument("--param", type=_param, action="append", default=[],
                      metavar="NAME=VALUE",
                      help="search parameter passed to jann.search, e.g. nprobe=16 "
                           "(repeatable)")
    demo.set_defaults(func=_demo)

    info = commands.add_parser(
        "info", help="print jann / jax / jaxlib versions, the backend and devices",
        description="Print jann, jax and jaxlib versions, the jax backend and devices, "
                    "and whether 64-bit mode (jax_enable_x64) is on.")
    info.set_defaults(func=_info)

    serve = commands.add_parser(
        "serve", help="serve a saved index over HTTP/JSON (search, add, remove, snapshot)",
        argument_default=argparse.SUPPRESS,      # unset flags: jann.serve.ServeConfig's defaults
        description="Serve the index saved at CHECKPOINT (by jann.save) over HTTP/JSON: "
                    "POST /search, /add, /remove, /snapshot; GET /health, /stats, "
                    "/openapi.json. Concurrent searches are batched into one compiled "
                    "search; writes are logged in CHECKPOINT and survive a crash; "
                    "/snapshot saves a new checkpoint version. Needs the 'serve' extra: "
                    "pip install 'jann[serve]'.")
    serve.add_argument("checkpoint", metavar="CHECKPOINT",
                       help="checkpoint directory written by jann.save")
    serve.add_argument("--host", help="address to bind (default: 127.0.0.1, loopback only)")
    serve.add_argument("--port", type=int,
                       help="port (default: 8000; 0 picks a free one, printed at start)")
    serve.add_argument("--token",
                       help="bearer token required by /add, /remove and /snapshot "
                            "(default: $JANN_TOKEN; unset: no token)")
    serve.add_argument("--max-body-bytes", type=_positive_int, metavar="N",
                       help="largest accepted request body (default: 64 MiB)")
    serve.add_argument("--max-wait-ms", type=float, metavar="MS",
                       help="how long a search waits for others to share its batch "
                            "(default: 2)")
    serve.add_argument("--max-batch", type=int, metavar="ROWS", choices=QUERY_BUCKETS,
                       help="most query rows per compiled search; every bucket up to it is "
                            f"compiled at start (one of {', '.join(map(str, QUERY_BUCKETS))}; "
                            "default: 1024)")
    serve.add_argument("--backend", choices=("auto", "xla", "pallas"),
                       help="scan backend of every search (default: JANN_BACKEND, else auto)")
    serve.add_argument("--no-batching", dest="batching", action="store_false",
                       help="answer each request with its own search (for comparison)")
    serve.add_argument("--warm-k", type=_positive_int, action="append", metavar="K",
                       help="k values compiled at start (repeatable; default: 10)")
    serve.add_argument("--param", dest="warm_params", type=_param, action="append",
                       metavar="NAME=VALUE",
                       help="search parameter of the requests that do not name it, "
                            "compiled at start, e.g. nprobe=16 (repeatable); requests may "
                            "name others")
    serve.add_argument("--max-k", type=_positive_int,
                       help="largest k a request may ask for (default: 1024)")
    serve.add_argument("--max-queries", type=_positive_int, metavar="N",
                       help="most queries per request (default: 16384)")
    serve.add_argument("--import", dest="imports", action="append", metavar="MODULE",
                       help="import MODULE before loading (repeatable): the module that "
                            "defines an index type of your own")
    serve.set_defaults(func=_serve)
    return parser


# ------------------------------------------------------------------------------ info
def _info(args) -> int:
    import jax
    import jaxlib

    import jann

    _line("jann", jann.__version__)
    _line("jax", jax.__version__)
    _line("jaxlib", jaxlib.__version__)
    _line("backend", jax.default_backend())
    devices = jax.devices()
    _line("devices", f"{len(devices)}: " + ", ".join(str(d) for d in devices))
    _line("x64 enabled", "yes" if jax.config.jax_enable_x64 else "no")
    return 0


# ------------------------------------------------------------------------------ demo
def _load(args) -> tuple[str, np.ndarray, np.ndarray, str | None]:
    from jann import datasets, io

    if args.dataset is None:
        data = datasets.load_embedded()
        return data["name"] + " (embedded)", data["base"], data["queries"], data["metric"]
    path = Path(args.dataset)
    if not path.exists():
        raise _UsageError(f"dataset not found: {path}")
    data = io.load_dataset(path)
    name = path.resolve().name or str(path)
    base, queries = data["base"], data["queries"]
    if queries is None:
        n = base.shape[0]
        if n < 2:
            raise _UsageError(f"{path}: too few vectors ({n}) to hold out queries")
        held = min(_DEFAULT_QUERIES, n // 2)
        base, queries = base[: n - held], base[n - held:]
        name += f" (last {held} base rows as queries)"
    return name, base, queries, data["metric"]


def _normalized(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1)


def _oracle_inputs(xq, xb, metric):
    """float64 queries and base, and the metric exact_knn runs, for an index metric."""
    xq = np.asarray(xq, np.float64)
    xb = np.asarray(xb, np.float64)
    if metric == "cosine":
        return _normalized(xq), _normalized(xb), "ip"
    return xq, xb, metric


def _exact_distances(xq, xb, ids, metric):
    """float64 distances (exact_knn's convention) between each query and its given ids."""
    rows = xb[np.where(ids >= 0, ids, 0)]                      # (nq, k, d)
    if metric == "l2":
        d = ((rows - xq[:, None, :]) ** 2).sum(-1)
    else:
        d = np.einsum("qkd,qd->qk", rows, xq)
    bad = np.inf if metric == "l2" else -np.inf
    return np.where(ids >= 0, d, bad)


def _compare(D, I, gt_d, gt_i, xq, xb, metric, k):
    """(recall@k counting ties as hits, results equal exact search up to ties).

    gt_d / gt_i hold the k (+1 when the base has more) exact neighbours in float64.
    Equal means: every query has k distinct ids; its returned distances match both the
    exact top-k distances and the exact distances of the returned ids, position by
    position (rtol 1e-4, plus a small atol scaled to the vectors' squared norms); and
    every exact neighbour whose distance ties with no other of the k (+1) nearest is
    among the returned ids.
    """
    similarity = metric != "l2"
    D = np.asarray(D, np.float64)
    I = np.asarray(I).astype(np.int64)
    scale = (xq * xq).sum(1) + (xb * xb).sum(1).max()         # bounds the distance terms
    atol = _ATOL_SCALE * scale

    def close(a, b, tol):
        return np.abs(a - b) <= tol + _RTOL * np.maximum(np.abs(a), np.abs(b))

    top_d, top_i = gt_d[:, :k], gt_i[:, :k]
    got = _exact_distances(xq, xb, I, metric)
    kth = top_d[:, -1:]
    within = close(got, kth, atol[:, None]) | ((got >= kth) if similarity else (got <= kth))
    valid = I >= 0
    ordered = np.sort(I, axis=1)
    first = np.ones_like(valid)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]            # not a repeated id
    order = np.argsort(I, axis=1, kind="stable")
    counted = np.zeros_like(valid)
    np.put_along_axis(counted, order, first, axis=1)
    hits = (within & valid & counted).sum()
    recall = min(1.0, float(hits) / I.size)

    distinct = (valid & counted).sum(1) == k
    same_d = close(D, top_d, atol[:, None]).all(1) & close(D, got, atol[:, None]).all(1)
    sorted_got = -np.sort(-got, axis=1) if similarity else np.sort(got, axis=1)
    same_exact = close(sorted_got, top_d, atol[:, None]).all(1)
    tied = close(gt_d[:, :, None], gt_d[:, None, :], atol[:, None, None])
    untied = tied.sum(2)[:, :k] == 1
    present = (top_i[:, :, None] == I[:, None, :]).any(2)
    found = (present | ~untied).all(1)
    return recall, bool((distinct & same_d & same_exact & found).all())


def _demo(args) -> int:
    import jax

    import jann
    from jann import datasets
    from jann.ops.distances import canonical_metric

    name, base, queries, data_metric = _load(args)
    metric = canonical_metric(args.metric or data_metric or "l2")
    if metric not in _ORACLE_METRICS:
        raise _UsageError(f"demo checks results with exact search, which supports the "
                          f"{', '.join(_ORACLE_METRICS)} metrics; got {metric!r}")
    if base.ndim != 2 or queries.ndim != 2 or base.shape[1] != queries.shape[1]:
        raise _UsageError(f"base {base.shape} and queries {queries.shape} do not match")
    nb, d = base.shape
    nq = min(args.queries or _DEFAULT_QUERIES, queries.shape[0])
    if args.dataset is None and args.queries is None:
        nq = queries.shape[0]
    k = args.k
    if k > nb:
        raise _UsageError(f"--k {k} is larger than the base ({nb} vectors)")
    params = dict(args.param)
    if args.backend is not None:
        params["backend"] = args.backend

    index = jann.index_factory(d, args.index, metric=metric)
    xb = np.ascontiguousarray(base, np.float32)
    xq = np.ascontiguousarray(queries[:nq], np.float32)

    _line("dataset", name)
    _line("base", _shape(base))
    _line("queries", f"{nq} of {_shape(queries)}")
    _line("metric", metric)
    described = index.describe()
    _line("index", args.index if args.index == described else f"{args.index} ({described})")
    _line("k", k)
    if params:
        _line("search params", ", ".join(f"{n}={v}" for n, v in params.items()))

    start = time.perf_counter()
    train_time = 0.0
    if not index.is_trained:
        index = jann.train(index, xb, key=jax.random.key(0))
        jax.block_until_ready(index)
        train_time = time.perf_counter() - start
    if index.id_mode == "sequential":
        index = jann.add(index, xb)
    else:                                        # IDMap: give the row numbers as ids
        index = jann.add(index, xb, np.arange(nb, dtype=np.int32))
    jax.block_until_ready(index)
    build = time.perf_counter() - start
    detail = f" (train {_seconds(train_time)})" if train_time else ""
    _line("build time", f"{_seconds(build)}{detail}, {jann.ntotal(index)} vectors")

    start = time.perf_counter()
    jax.block_until_ready(jann.search(index, xq, k=k, **params))
    _line("compile time", f"{_seconds(time.perf_counter() - start)} (first search)")
    start = time.perf_counter()
    D, I = jax.block_until_ready(jann.search(index, xq, k=k, **params))
    elapsed = time.perf_counter() - start
    _line("search time", _seconds(elapsed))
    _line("QPS", f"{nq / elapsed:,.0f}")

    oq, ob, oracle_metric = _oracle_inputs(xq, xb, metric)
    start = time.perf_counter()
    gt_d, gt_i = datasets.exact_knn(oq, ob, min(k + 1, nb), metric=oracle_metric)
    exact_time = time.perf_counter() - start
    _line("exact search", f"{_seconds(exact_time)} (numpy float64)")
    recall, equal = _compare(D, I, gt_d, gt_i, oq, ob, oracle_metric, k)
    _line(f"recall@{k}", f"{recall:.4f}")
    if isinstance(index, jann.FlatIndex):
        _line("results equal exact search", "yes" if equal else "no")
    return 0


# ----------------------------------------------------------------------------- serve
# The optional 'serve' extra: a missing one is a usage problem, not a crash.
_SERVE_PACKAGES = ("starlette", "uvicorn", "anyio", "h11")


def _serve(args) -> int:
    try:
        from jann import serve
    except ModuleNotFoundError as e:
        if (e.name or "").partition(".")[0] not in _SERVE_PACKAGES:
            raise
        raise _UsageError(str(e)) from None
    given = {name: value for name, value in vars(args).items()
             if name not in ("command", "func", "imports")}
    for module in getattr(args, "imports", ()):  # registers its index types
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise _UsageError(f"--import {module}: {e}") from None
    # Only given options are in args (ServeConfig holds the defaults); a backend becomes
    # the process default, so every search of the service uses it.
    backend = given.pop("backend", None)
    if backend is not None:
        import jann
        jann.config.set_backend(backend)
    if "token" not in given and os.environ.get("JANN_TOKEN"):
        given["token"] = os.environ["JANN_TOKEN"]
    for name in ("warm_k", "warm_params"):
        if name in given:
            given[name] = tuple(given[name])
    return serve.run(serve.ServeConfig(**given))


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    """Run the `jann` command line with `argv` (default: sys.argv[1:]); returns the exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:                      # --help, --version, usage errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2

    from jann.errors import JannError

    try:
        return args.func(args)
    except (JannError, _UsageError, FileNotFoundError) as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"jann {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
