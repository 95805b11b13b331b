"""`jann serve`: an HTTP/JSON search service over one index, with request batching,
atomic index swaps, snapshots and a write-ahead log.

    jann serve ckpt/ --port 8000                  # ckpt/ written by jann.save
    curl -s localhost:8000/search -d '{"vectors": [[0.1, ...]], "k": 10, "params": {"nprobe": 16}}'

Endpoints (the full description is served at GET /openapi.json):

    POST /search    {"vectors": [[...]], "k": 10, "params": {...}, "filter": {"ids": [...]}}
                    -> {"distances", "ids", "version", "ntotal", "metric", "id_dtype"}
    POST /add       {"vectors": [[...]], "ids": [...]}      (ids only for IDMap indexes)
    POST /remove    {"ids": [...]}
    POST /snapshot  save the served index as a new checkpoint version (jann.save)
    GET  /health    GET /stats    GET /openapi.json

Web stack: Starlette (ASGI toolkit) served by uvicorn (ASGI server). Both are maintained
by the encode / Kludex team, widely deployed (Starlette is what FastAPI is built on),
pure Python with small dependency trees (anyio, h11), and they pick up uvloop / httptools
when installed. An asyncio server suits the batching design: the event loop only parses
and queues requests, while one worker thread runs the jitted searches (XLA releases the
GIL), so requests keep arriving during a search and form the next batch. FastAPI was not
used: its per-field pydantic validation of (n, d) float lists adds a copy and error
messages that differ from the library's; requests are validated here with jann's own
checks, so a bad request gets the same message as the library call would raise.

Design:
- Micro-batching: search requests are queued; a batcher waits up to `max_wait_ms` after
  the oldest queued request (or until `max_batch` query rows are queued), groups the
  requests by (k, search parameters) and answers each group with jann.search calls of at
  most `max_batch` rows. jann.search pads batches to QUERY_BUCKETS; every bucket up to
  `max_batch` is compiled ("warmed") for the configured k values and parameters before
  the server accepts connections and before any new index version is swapped in, so no
  request pays compilation. Other k / parameters / filters compile once on first use
  (`request_compiles` in /stats counts compilations that happened while serving).
  `batching=False` answers each request with its own search (the baseline of
  benchmarks/serve_load.py).
- Versions: the served index is one immutable pytree behind one reference. A write builds
  a new index with the pure jann.add / jann.remove_ids, warms it, logs it, and replaces
  the reference under a lock; a search batch reads the reference once, so every response
  comes from exactly one version (reported as `version`), old or new, never a mix.
- Durability: every acknowledged add / remove is first appended to a write-ahead log
  `wal-<checkpoint version>.log` in the checkpoint directory and fsynced. POST /snapshot
  saves the index with jann.save (atomic: a new version directory, then LATEST replaced)
  and starts a new, empty log for the new version. On start the server loads LATEST and
  replays that version's log, so a crash (even SIGKILL during a snapshot) loses nothing
  that was acknowledged: either the new snapshot is complete and holds every logged
  write, or LATEST still names the old version and its log is intact. A torn record at
  the log's end (a write that crashed before being acknowledged) is dropped on replay.
  One server per checkpoint directory: a lock file (`serve.lock`, released by the kernel
  when the process dies) makes a second one refuse to start.
- Reliability: bad requests get 4xx JSON ({"error": {"type", "message"}}) and never touch
  the served index (validation happens per request, before batching); bodies over
  `max_body_bytes` are refused with 413 (read and discarded, never held in memory).
- Security: binds to 127.0.0.1 by default; with a token, POST /add, /remove and /snapshot
  require "Authorization: Bearer <token>". Reads are open to whoever can connect.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import fcntl
import hmac
import json
import os
import socket
import struct
import sys
import threading
import time
import traceback
import zlib
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np

try:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse
    from starlette.routing import Route
except ModuleNotFoundError as exc:  # the web stack is an optional extra
    raise ModuleNotFoundError(
        f"jann serve needs the web server packages starlette and uvicorn (missing: "
        f"{exc.name}); install them with: pip install 'jann[serve]'", name=exc.name) from exc

import jann
from jann._inputs import as_vectors, check_finite, id_dtype
from jann.api import QUERY_BUCKETS
from jann.checkpoint import current_version
from jann.errors import DuplicateIdError, IdNotFoundError, InvalidInputError, JannError
from jann.ops.distances import NAN_TOLERANT
from jann.ops.topk import check_k

__all__ = ["ServeConfig", "SearchService", "create_app", "load_service", "run",
           "openapi_document"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_BODY_BYTES = 64 << 20
DEFAULT_MAX_WAIT_MS = 2.0
DEFAULT_MAX_BATCH = 1024
DEFAULT_MAX_K = 1024
DEFAULT_MAX_QUERIES = 16384
# Latency percentiles in /stats are over this many most recent requests per endpoint.
LATENCY_WINDOW = 10_000
# Request bodies above this size are decoded in a worker thread, off the event loop.
_INLINE_JSON_BYTES = 256 << 10
# Search-parameter names that would collide with jann.search's own arguments.
_RESERVED_PARAMS = frozenset({"index", "xq", "k", "selector"})
# Files the server keeps in the checkpoint directory; jann.save's clean-up of old versions
# removes only entries starting with "v" or ".", so these names survive it.
_WAL_PREFIX, _WAL_SUFFIX = "wal-", ".log"
_LOCK_FILE = "serve.lock"


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """Settings of `jann serve` (the CLI flags of the same names)."""

    checkpoint: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    token: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS
    max_batch: int = DEFAULT_MAX_BATCH
    batching: bool = True
    warm_k: tuple[int, ...] = (10,)
    warm_params: tuple[tuple[str, object], ...] = ()
    max_k: int = DEFAULT_MAX_K
    max_queries: int = DEFAULT_MAX_QUERIES

    def __post_init__(self):
        if self.max_batch not in QUERY_BUCKETS:
            raise InvalidInputError(
                f"max_batch must be one of jann's query buckets {QUERY_BUCKETS}, got "
                f"{self.max_batch}")
        if not 0 <= self.port <= 65535:
            raise InvalidInputError(f"port must be in [0, 65535], got {self.port}")
        if self.max_wait_ms < 0:
            raise InvalidInputError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        for name in ("max_body_bytes", "max_k", "max_queries"):
            if getattr(self, name) <= 0:
                raise InvalidInputError(f"{name} must be positive, got {getattr(self, name)}")
        for k in self.warm_k:
            check_k(k)
            if k > self.max_k:
                raise InvalidInputError(f"warm k={k} is above max_k={self.max_k}")
        _check_params(dict(self.warm_params))

    @property
    def buckets(self) -> tuple[int, ...]:
        """The query buckets a search of at most `max_batch` rows can use."""
        return tuple(b for b in QUERY_BUCKETS if b <= self.max_batch)


# ------------------------------------------------------------------------- errors
class _HTTPError(Exception):
    """A request error with its HTTP status, answered as {"error": {type, message}}."""

    def __init__(self, status: int, message: str, kind: str = "BadRequest"):
        super().__init__(message)
        self.status, self.kind = status, kind


def _status_of(exc: JannError) -> int:
    if isinstance(exc, DuplicateIdError):
        return 409
    if isinstance(exc, IdNotFoundError):
        return 404
    return 422


def _error_response(status: int, kind: str, message: str, headers=None) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status,
                        headers=headers)


# -------------------------------------------------------------- request parsing
def _check_params(params: dict) -> dict:
    for name, value in params.items():
        if not isinstance(name, str) or not name.isidentifier() or name in _RESERVED_PARAMS:
            raise InvalidInputError(f"invalid search parameter name {name!r}")
        if not isinstance(value, (int, float, str, bool)):
            raise InvalidInputError(
                f"search parameter {name} must be a number, string or boolean, got "
                f"{type(value).__name__}")
    return params


def _params_key(params: dict) -> tuple:
    # 1, 1.0 and True compare equal; the type keeps them in separate batches.
    return tuple(sorted((k, type(v).__name__, v) for k, v in params.items()))


def _field(body: dict, name: str, default=dataclasses.MISSING):
    if name in body:
        return body[name]
    if default is dataclasses.MISSING:
        raise InvalidInputError(f"the request needs a {name!r} field")
    return default


def _vectors(value, d: int, metric: str, name: str = "vectors") -> np.ndarray:
    """JSON rows as a validated (n, d) float32 array, with the library's messages."""
    if isinstance(value, list) and not value:
        return np.zeros((0, d), np.float32)
    if not isinstance(value, list) or not all(isinstance(row, list) for row in value):
        raise InvalidInputError(f"{name} must be a list of rows (a 2-D array (n, d))")
    try:
        x = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        raise InvalidInputError(
            f"{name} must be a 2-D array of numbers with rows of equal length") from None
    x = np.asarray(as_vectors(x, d, name), np.float32)
    check_finite(x, name, allow_nan=metric in NAN_TOLERANT)
    return x


def _ids(value, name: str = "ids") -> np.ndarray:
    if not isinstance(value, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in value):
        raise InvalidInputError(f"{name} must be a list of integers")
    try:
        return np.asarray(value, np.int64).reshape(-1)
    except OverflowError:
        raise InvalidInputError(f"{name} must fit in 64-bit integers") from None


def _selector(value):
    """The request's id filter as a jann selector: {"ids": [...]} or {"range": [lo, hi]}."""
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) != 1 or not {"ids", "range"} & set(value):
        raise InvalidInputError(
            'filter must be {"ids": [id, ...]} or {"range": [imin, imax]}')
    if "ids" in value:
        return jann.IDSelectorBatch(_ids(value["ids"], "filter ids"))
    bounds = value["range"]
    if not isinstance(bounds, list) or len(bounds) != 2:
        raise InvalidInputError('filter range must be [imin, imax]')
    lo, hi = _ids(bounds, "filter range")
    return jann.IDSelectorRange(lo, hi)


def _json_floats(a: np.ndarray) -> list:
    """float rows for JSON: missing results (+-inf) become null (JSON has no infinity)."""
    out = a.astype(object)
    out[~np.isfinite(a)] = None
    return out.tolist()


# ---------------------------------------------------------------- write-ahead log
_WAL_RECORD = struct.Struct("<4sIQI")       # magic, header bytes, payload bytes, crc32
_WAL_MAGIC = b"JWAL"


def _wal_name(checkpoint_version: str) -> str:
    return f"{_WAL_PREFIX}{checkpoint_version}{_WAL_SUFFIX}"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _apply(index, op: str, vectors, ids):
    """One write, as the pure library call: (new index, what it did). Shared by live
    writes and log replay, so a replay rebuilds exactly the acknowledged index."""
    if op == "add":
        first = jann.ntotal(index) if index.id_mode == "sequential" else None
        new = jann.add(index, vectors, ids)
        return new, {"added": int(vectors.shape[0]), "first_id": first}
    if op == "remove":
        new, removed = jann.remove_ids(index, jann.IDSelectorBatch(ids))
        return new, {"removed": int(removed)}
    raise ValueError(f"unknown write {op!r}")


class _WriteLog:
    """Append-only log of the writes applied on top of one checkpoint version.

    Record: magic, header length, payload length, CRC-32 of header + payload; the header
    is JSON ({"op", "shape", "n_ids"}), the payload little-endian float32 vectors then
    int64 ids. Appends are fsynced before the write is acknowledged.
    """

    def __init__(self, directory: str, checkpoint_version: str):
        self.directory = directory
        self.records = 0
        # One writer per checkpoint; the kernel drops the lock when the process dies.
        self._lock = open(os.path.join(directory, _LOCK_FILE), "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise InvalidInputError(f"another jann serve is serving {directory}") from None
        self.start(checkpoint_version)

    def start(self, checkpoint_version: str) -> None:
        """Log to the file of `checkpoint_version` and delete the logs of other versions
        (they are contained in that checkpoint, or belong to none)."""
        self.path = os.path.join(self.directory, _wal_name(checkpoint_version))
        for entry in os.listdir(self.directory):
            if entry.startswith(_WAL_PREFIX) and entry.endswith(_WAL_SUFFIX) and \
                    os.path.join(self.directory, entry) != self.path:
                os.remove(os.path.join(self.directory, entry))
        self.records = 0

    @property
    def size(self) -> int:
        return os.path.getsize(self.path) if os.path.exists(self.path) else 0

    def append(self, op: str, vectors, ids) -> None:
        header = json.dumps({"op": op, "shape": None if vectors is None else list(vectors.shape),
                             "n_ids": None if ids is None else int(ids.shape[0])}).encode()
        payload = b"".join([
            b"" if vectors is None else np.ascontiguousarray(vectors, "<f4").tobytes(),
            b"" if ids is None else np.ascontiguousarray(ids, "<i8").tobytes()])
        crc = zlib.crc32(header + payload)
        created = not os.path.exists(self.path)
        with open(self.path, "ab") as f:
            f.write(_WAL_RECORD.pack(_WAL_MAGIC, len(header), len(payload), crc))
            f.write(header)
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        if created:                                  # make the new file's name durable
            _fsync_dir(self.directory)
        self.records += 1

    def replay(self, index):
        """index with every complete record applied; a torn or corrupt tail (a write
        that never got acknowledged) is cut off the file. Returns (index, records)."""
        if not os.path.exists(self.path):
            return index, 0
        with open(self.path, "rb") as f:
            data = f.read()
        offset, records = 0, 0
        while offset < len(data):
            record = self._parse(data, offset)
            if record is None:
                print(f"jann serve: {self.path}: dropping {len(data) - offset} bytes of an "
                      "incomplete record at the end of the log (a write that was not "
                      "acknowledged)", file=sys.stderr, flush=True)
                with open(self.path, "r+b") as f:
                    f.truncate(offset)
                    os.fsync(f.fileno())
                break
            offset, op, vectors, ids = record
            index, _ = _apply(index, op, vectors, ids)
            records += 1
        self.records = records
        return index, records

    @staticmethod
    def _parse(data: bytes, offset: int):
        end = offset + _WAL_RECORD.size
        if end > len(data):
            return None
        magic, header_len, payload_len, crc = _WAL_RECORD.unpack_from(data, offset)
        stop = end + header_len + payload_len
        if magic != _WAL_MAGIC or stop > len(data) or \
                zlib.crc32(data[end:stop]) != crc:
            return None
        header = json.loads(data[end:end + header_len])
        payload = memoryview(data)[end + header_len:stop]
        vectors = ids = None
        used = 0
        if header["shape"] is not None:
            count = int(np.prod(header["shape"]))
            vectors = np.frombuffer(payload, "<f4", count).reshape(header["shape"])
            used = 4 * count
        if header["n_ids"] is not None:
            ids = np.frombuffer(payload, "<i8", header["n_ids"], used)
        return stop, header["op"], vectors, ids


# ------------------------------------------------------------------------ service
@dataclasses.dataclass(frozen=True)
class _Version:
    """One served index version: replaced whole, never modified."""

    index: object
    version: int
    ntotal: int
    checkpoint_version: str


@dataclasses.dataclass
class _Pending:
    xq: np.ndarray
    k: int
    params: dict
    selector: object
    future: asyncio.Future
    arrived: float


def _signature(index) -> tuple:
    """What the compiled search programs depend on: structure, static config, shapes."""
    leaves = jax.tree.leaves(index)
    return jax.tree.structure(index), tuple((l.shape, str(l.dtype)) for l in leaves)


def _percentiles(values) -> dict:
    if not values:
        return {"count": 0}
    a = np.asarray(values) * 1e3
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"count": len(values), "p50_ms": float(p50), "p90_ms": float(p90),
            "p99_ms": float(p99), "max_ms": float(a.max())}


class SearchService:
    """The served index and everything around it, without HTTP: batching, writes,
    snapshots, statistics. `create_app` puts it behind HTTP."""

    def __init__(self, index, config: ServeConfig, checkpoint_version: str,
                 log: _WriteLog):
        self.config = config
        self.d = index.d
        self.metric = index.metric
        self._log = log
        self._state_lock = threading.Lock()
        self._state = _Version(index, 0, jann.ntotal(index), checkpoint_version)
        self._search_pool = ThreadPoolExecutor(1, thread_name_prefix="jann-search")
        self._write_pool = ThreadPoolExecutor(1, thread_name_prefix="jann-write")
        self._pending: collections.deque[_Pending] = collections.deque()
        self._pending_rows = 0
        self._arrived: asyncio.Event | None = None
        self._batcher: asyncio.Task | None = None
        self._warmed: set = set()
        self._in_search = threading.local()
        self._started = time.time()
        self.counters = collections.Counter()           # batches, searched rows, ...
        self.requests: dict[str, collections.Counter] = collections.defaultdict(
            collections.Counter)
        self.latency: dict[str, collections.deque] = collections.defaultdict(
            lambda: collections.deque(maxlen=LATENCY_WINDOW))
        jax.monitoring.register_event_duration_secs_listener(self._on_jax_event)

    # --- state ----------------------------------------------------------------
    @property
    def current(self) -> _Version:
        with self._state_lock:
            return self._state

    def _publish(self, index) -> _Version:
        """Make `index` the served version: one reference replaced under the lock."""
        ntotal = jann.ntotal(index)
        with self._state_lock:
            self._state = dataclasses.replace(self._state, index=index, ntotal=ntotal,
                                              version=self._state.version + 1)
            return self._state

    # --- compilation ------------------------------------------------------------
    def _on_jax_event(self, event: str, duration: float, **kwargs) -> None:
        if event == "/jax/core/compile/backend_compile_duration" and \
                getattr(self._in_search, "active", False):
            self.counters["request_compiles"] += 1

    def warm(self, index) -> float:
        """Compile the searches of every bucket x warm k for this index's shapes (once
        per shape signature); returns the seconds spent."""
        signature = _signature(index)
        if signature in self._warmed:
            return 0.0
        start = time.perf_counter()
        params = dict(self.config.warm_params)
        for k in self.config.warm_k:
            for bucket in self.config.buckets:
                D, _ = jann.search(index, np.zeros((bucket, self.d), np.float32), k, **params)
                D.block_until_ready()
        self._warmed.add(signature)
        return time.perf_counter() - start

    # --- searches -------------------------------------------------------------------
    def start(self) -> None:
        """Start the batcher on the running event loop."""
        self._arrived = asyncio.Event()
        self._batcher = asyncio.get_running_loop().create_task(self._batch_loop())

    async def stop(self) -> None:
        if self._batcher is not None:
            self._batcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._batcher
        self._search_pool.shutdown(wait=True)
        self._write_pool.shutdown(wait=True)
        jax.monitoring.unregister_event_duration_listener(self._on_jax_event)

    async def search(self, xq: np.ndarray, k: int, params: dict, selector=None):
        """(distances, ids, version) for validated queries, answered in a batch."""
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(xq, k, params, selector, future, time.perf_counter()))
        self._pending_rows += xq.shape[0]
        self._arrived.set()
        return await future

    def _take(self) -> list[_Pending]:
        """The next batch: queued requests up to max_batch rows (at least one); one
        request when batching is off."""
        batch, rows = [], 0
        while self._pending and (not batch or (
                self.config.batching and rows + self._pending[0].xq.shape[0]
                <= self.config.max_batch)):
            item = self._pending.popleft()
            batch.append(item)
            rows += item.xq.shape[0]
        self._pending_rows -= rows
        return batch

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        wait = self.config.max_wait_ms / 1e3 if self.config.batching else 0.0
        while True:
            while not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
            deadline = self._pending[0].arrived + wait
            while self._pending_rows < self.config.max_batch:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._arrived.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), left)
            batch = self._take()
            try:
                outcomes = await loop.run_in_executor(self._search_pool, self._run_batch, batch)
            except Exception as exc:                 # a bug: fail these requests, keep serving
                outcomes = [exc] * len(batch)
            for item, outcome in zip(batch, outcomes):
                if item.future.done():                  # the client went away
                    continue
                if isinstance(outcome, BaseException):
                    item.future.set_exception(outcome)
                else:
                    item.future.set_result(outcome)

    def _run_batch(self, batch: list[_Pending]) -> list:
        """Search thread: one index version for the whole batch; requests with the same
        k and parameters (and no filter) share jann.search calls."""
        state = self.current
        groups: dict[tuple, list[int]] = {}
        for i, item in enumerate(batch):
            key = (item.k, _params_key(item.params)) if item.selector is None else ("filter", i)
            groups.setdefault(key, []).append(i)
        outcomes: list = [None] * len(batch)
        self._in_search.active = True
        try:
            for members in groups.values():
                first = batch[members[0]]
                xq = np.concatenate([batch[i].xq for i in members])
                try:
                    D, I = self._search_rows(state.index, xq, first.k, first.selector,
                                             first.params)
                except JannError as exc:
                    for i in members:
                        outcomes[i] = exc
                    continue
                start = 0
                for i in members:
                    stop = start + batch[i].xq.shape[0]
                    outcomes[i] = (D[start:stop], I[start:stop], state)
                    start = stop
        finally:
            self._in_search.active = False
        self.counters["batches"] += 1
        self.counters["batched_requests"] += len(batch)
        self.counters["searched_queries"] += sum(item.xq.shape[0] for item in batch)
        return outcomes

    def _search_rows(self, index, xq, k, selector, params):
        """jann.search in pieces of at most max_batch rows, so only warmed buckets run."""
        step = self.config.max_batch
        parts = []
        for start in range(0, max(xq.shape[0], 1), step):
            try:
                D, I = jann.search(index, xq[start:start + step], k, selector=selector,
                                   **params)
            except TypeError as exc:                 # an unknown keyword for this index
                if not params:
                    raise
                raise InvalidInputError(
                    f"invalid search parameters {sorted(params)} for "
                    f"{index.describe()}: {exc}") from None
            parts.append((np.asarray(D), np.asarray(I)))
        return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))

    # --- writes -----------------------------------------------------------------
    async def write(self, op: str, vectors=None, ids=None) -> dict:
        """Apply an add / remove: build the new index, warm it, log it, swap it in."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._write_pool, self._write, op, vectors, ids)

    def _write(self, op, vectors, ids) -> dict:
        state = self.current
        index, info = _apply(state.index, op, vectors, ids)
        if op == "remove" and info["removed"] == 0:       # nothing changed: nothing to log
            return {**info, "version": state.version, "ntotal": state.ntotal, "durable": True}
        self.warm(index)                      # compile off the request path, before the swap
        self._log.append(op, vectors, ids)
        new = self._publish(index)
        return {**info, "version": new.version, "ntotal": new.ntotal, "durable": True}

    async def snapshot(self) -> dict:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._write_pool, self._snapshot)

    def _snapshot(self) -> dict:
        # In the write thread: no write runs meanwhile, so the saved index holds exactly
        # the logged writes, and the log can restart empty for the new version.
        state = self.current
        saved = jann.save(state.index, self.config.checkpoint)
        self._log.start(saved)
        with self._state_lock:
            self._state = dataclasses.replace(self._state, checkpoint_version=saved)
        return {"checkpoint": self.config.checkpoint, "checkpoint_version": saved,
                "version": state.version, "ntotal": state.ntotal}

    # --- reports ------------------------------------------------------------------
    def health(self) -> dict:
        state = self.current
        return {"status": "ok", "version": state.version, "ntotal": state.ntotal}

    def stats(self) -> dict:
        state = self.current
        batches = self.counters["batches"]
        return {
            "index": {"description": state.index.describe(), "type": type(state.index).__name__,
                      "d": self.d, "metric": self.metric, "ntotal": state.ntotal},
            "version": state.version,
            "checkpoint": {"path": self.config.checkpoint,
                           "version": state.checkpoint_version,
                           "log_records": self._log.records, "log_bytes": self._log.size},
            "batching": {"enabled": self.config.batching,
                         "max_wait_ms": self.config.max_wait_ms,
                         "max_batch": self.config.max_batch, "batches": batches,
                         "requests": self.counters["batched_requests"],
                         "queries": self.counters["searched_queries"],
                         "mean_requests_per_batch":
                             self.counters["batched_requests"] / batches if batches else 0.0},
            "compiled": {"buckets": list(self.config.buckets),
                         "warm_k": list(self.config.warm_k),
                         "warm_params": dict(self.config.warm_params),
                         "index_shapes_warmed": len(self._warmed),
                         "request_compiles": self.counters["request_compiles"]},
            "requests": {name: dict(counts) for name, counts in self.requests.items()},
            "latency": {name: _percentiles(list(values))
                        for name, values in self.latency.items()},
            "uptime_s": time.time() - self._started,
        }


# --------------------------------------------------------------------------- HTTP
async def _read_json(request, limit: int) -> dict:
    """The body as a JSON object; 413 above `limit` bytes (the rest is read and dropped,
    so the connection stays usable and memory stays bounded)."""
    request.state.body_read = True
    chunks, size = [], 0
    declared = request.headers.get("content-length")
    too_big = declared is not None and declared.isdigit() and int(declared) > limit
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            too_big = True
        if not too_big:
            chunks.append(chunk)
    if too_big:
        raise _HTTPError(413, f"request body of {max(size, int(declared or 0))} bytes is "
                              f"above the server's limit of {limit} bytes (--max-body-bytes)",
                         "PayloadTooLarge")
    data = b"".join(chunks)
    try:
        # Large bodies are decoded off the event loop, which keeps serving meanwhile.
        body = await asyncio.to_thread(json.loads, data) if size > _INLINE_JSON_BYTES else \
            json.loads(data)
    except ValueError as exc:                        # includes UnicodeDecodeError
        raise _HTTPError(400, f"malformed JSON: {exc}", "MalformedJSON") from None
    if not isinstance(body, dict):
        raise _HTTPError(400, f"the body must be a JSON object, got {type(body).__name__}",
                         "MalformedJSON")
    return body


def create_app(service: SearchService) -> Starlette:
    """The ASGI application serving `service`."""
    config = service.config

    def authorize(request) -> None:
        if config.token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode(), config.token.encode()):
            raise _HTTPError(401, "this endpoint needs 'Authorization: Bearer <token>' with "
                                  "the server's token", "Unauthorized")

    def endpoint(name: str, handler, *, write: bool = False):
        async def run(request):
            start = time.perf_counter()
            request.state.body_read = False
            try:
                if write:
                    authorize(request)
                response = await handler(request)
            except _HTTPError as exc:
                response = _error_response(
                    exc.status, exc.kind, str(exc),
                    {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None)
            except JannError as exc:
                response = _error_response(_status_of(exc), type(exc).__name__, str(exc))
            except Exception as exc:                 # a bug: say so, keep serving
                traceback.print_exc()
                response = _error_response(500, type(exc).__name__, f"internal error: {exc}")
            if not request.state.body_read and request.method == "POST":
                with contextlib.suppress(Exception):  # keep the connection in sync
                    async for _ in request.stream():
                        pass
            service.requests[name][str(response.status_code)] += 1
            if response.status_code < 400:
                service.latency[name].append(time.perf_counter() - start)
            return response
        return run

    async def search(request):
        body = await _read_json(request, config.max_body_bytes)
        xq = _vectors(_field(body, "vectors"), service.d, service.metric)
        if xq.shape[0] > config.max_queries:
            raise InvalidInputError(f"at most {config.max_queries} queries per request "
                                    f"(--max-queries), got {xq.shape[0]}")
        k = check_k(_field(body, "k", 10))
        if k > config.max_k:
            raise InvalidInputError(f"k={k} is above the server's limit max_k={config.max_k}")
        params = _field(body, "params", {})
        if not isinstance(params, dict):
            raise InvalidInputError("params must be an object of search parameters")
        selector = _selector(_field(body, "filter", None))
        params = _check_params(params)
        if xq.shape[0]:
            D, I, state = await service.search(xq, k, params, selector)
        else:                                     # nothing to search (and nothing to compile)
            D, I = np.zeros((0, k), np.float32), np.zeros((0, k), id_dtype())
            state = service.current
        return JSONResponse({"distances": _json_floats(D), "ids": I.tolist(),
                             "version": state.version, "ntotal": state.ntotal,
                             "metric": service.metric, "id_dtype": I.dtype.name})

    async def add(request):
        body = await _read_json(request, config.max_body_bytes)
        vectors = await asyncio.to_thread(_vectors, _field(body, "vectors"), service.d,
                                          service.metric)
        ids = _field(body, "ids", None)
        ids = None if ids is None else _ids(ids)
        return JSONResponse(await service.write("add", vectors, ids))

    async def remove(request):
        body = await _read_json(request, config.max_body_bytes)
        return JSONResponse(await service.write("remove", None, _ids(_field(body, "ids"))))

    async def snapshot(request):
        return JSONResponse(await service.snapshot())

    async def health(request):
        return JSONResponse(service.health())

    async def stats(request):
        return JSONResponse(service.stats())

    document = openapi_document(service)

    async def openapi(request):
        return JSONResponse(document)

    async def http_error(request, exc: HTTPException):
        service.requests["other"][str(exc.status_code)] += 1
        return _error_response(exc.status_code, "HTTPError",
                               f"{exc.detail}: {request.method} {request.url.path}")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.start()
        yield
        await service.stop()

    routes = [
        Route("/search", endpoint("search", search), methods=["POST"]),
        Route("/add", endpoint("add", add, write=True), methods=["POST"]),
        Route("/remove", endpoint("remove", remove, write=True), methods=["POST"]),
        Route("/snapshot", endpoint("snapshot", snapshot, write=True), methods=["POST"]),
        Route("/health", endpoint("health", health), methods=["GET"]),
        Route("/stats", endpoint("stats", stats), methods=["GET"]),
        Route("/openapi.json", endpoint("openapi", openapi), methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error},
                     lifespan=lifespan)


# ------------------------------------------------------------------------ OpenAPI
def _array(items: dict, description: str = "") -> dict:
    out = {"type": "array", "items": items}
    return {**out, "description": description} if description else out


_NUMBER, _INTEGER = {"type": "number"}, {"type": "integer"}
_MATRIX = _array(_array(_NUMBER), "rows of equal length d (the index dimension)")


def _body(schema: str) -> dict:
    return {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def _answers(schema: str, *errors: int, secured: bool = False) -> dict:
    out = {"200": {"description": "OK", "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{schema}"}}}}}
    reasons = {400: "malformed JSON", 401: "missing or wrong bearer token",
               404: "unknown id", 409: "duplicate id (IDMap2)",
               413: "body above --max-body-bytes",
               422: "invalid values (dimension, NaN, k, parameters, ids)"}
    for status in errors + ((401,) if secured else ()):
        out[str(status)] = {"description": reasons[status], "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/Error"}}}}
    return out


def openapi_document(service: SearchService) -> dict:
    """The OpenAPI 3.1 description of the service (GET /openapi.json)."""
    secured = service.config.token is not None
    security = {"security": [{"bearer": []}]} if secured else {}
    objects = {
        "SearchRequest": {"type": "object", "required": ["vectors"], "properties": {
            "vectors": _MATRIX,
            "k": {"type": "integer", "minimum": 1, "maximum": service.config.max_k,
                  "default": 10},
            "params": {"type": "object", "description": "search-time keyword arguments of "
                       "jann.search, e.g. {\"nprobe\": 16}",
                       "additionalProperties": {"type": ["number", "string", "boolean"]}},
            "filter": {"description": "only return these ids (jann.IDSelectorBatch) or ids "
                       "in [imin, imax) (jann.IDSelectorRange)", "oneOf": [
                           {"type": "object", "required": ["ids"],
                            "properties": {"ids": _array(_INTEGER)}},
                           {"type": "object", "required": ["range"], "properties": {
                               "range": {**_array(_INTEGER), "minItems": 2, "maxItems": 2}}}]}}},
        "SearchResponse": {"type": "object", "properties": {
            "distances": _array(_array({"type": ["number", "null"]}),
                                "(nq, k); null where fewer than k results exist "
                                "(jann's +inf, or -inf for similarities)"),
            "ids": _array(_array(_INTEGER), "(nq, k); -1 where fewer than k results exist"),
            "version": {"type": "integer", "description": "index version that answered"},
            "ntotal": _INTEGER, "metric": {"type": "string"}, "id_dtype": {"type": "string"}}},
        "AddRequest": {"type": "object", "required": ["vectors"], "properties": {
            "vectors": _MATRIX,
            "ids": _array(_INTEGER, "required by IDMap indexes, refused by the others")}},
        "AddResponse": {"type": "object", "properties": {
            "added": _INTEGER, "first_id": {"type": ["integer", "null"],
                                            "description": "id of the first added vector "
                                            "(sequentially numbered indexes)"},
            "version": _INTEGER, "ntotal": _INTEGER, "durable": {"type": "boolean"}}},
        "RemoveRequest": {"type": "object", "required": ["ids"],
                          "properties": {"ids": _array(_INTEGER)}},
        "RemoveResponse": {"type": "object", "properties": {
            "removed": _INTEGER, "version": _INTEGER, "ntotal": _INTEGER}},
        "SnapshotResponse": {"type": "object", "properties": {
            "checkpoint": {"type": "string"}, "checkpoint_version": {"type": "string"},
            "version": _INTEGER, "ntotal": _INTEGER}},
        "Health": {"type": "object", "properties": {
            "status": {"type": "string"}, "version": _INTEGER, "ntotal": _INTEGER}},
        "Stats": {"type": "object", "description": "index, batching, compiled buckets, "
                  "request counts by status, latency percentiles (ms)"},
        "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
            "type": {"type": "string"}, "message": {"type": "string"}}}}},
    }
    paths = {
        "/search": {"post": {"summary": "k nearest neighbours of each query (jann.search)",
                             "requestBody": _body("SearchRequest"),
                             "responses": _answers("SearchResponse", 400, 413, 422)}},
        "/add": {"post": {"summary": "add vectors (jann.add); durable once acknowledged",
                          "requestBody": _body("AddRequest"), **security,
                          "responses": _answers("AddResponse", 400, 409, 413, 422,
                                                secured=secured)}},
        "/remove": {"post": {"summary": "remove ids (jann.remove_ids); sequentially "
                             "numbered indexes renumber the rest, as FAISS",
                             "requestBody": _body("RemoveRequest"), **security,
                             "responses": _answers("RemoveResponse", 400, 413, 422,
                                                   secured=secured)}},
        "/snapshot": {"post": {"summary": "save the served index as a new checkpoint version",
                               **security,
                               "responses": _answers("SnapshotResponse", secured=secured)}},
        "/health": {"get": {"summary": "liveness", "responses": _answers("Health")}},
        "/stats": {"get": {"summary": "statistics", "responses": _answers("Stats")}},
    }
    document = {"openapi": "3.1.0",
                "info": {"title": "jann serve", "version": jann.__version__,
                         "description": f"{service.current.index.describe()} index, "
                                        f"d={service.d}, metric={service.metric}"},
                "paths": paths, "components": {"schemas": objects}}
    if secured:
        document["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"}}
    return document


# ------------------------------------------------------------------------- startup
def load_service(config: ServeConfig) -> tuple[SearchService, dict]:
    """Load the latest checkpoint, replay its write-ahead log and warm the buckets."""
    path = os.path.abspath(config.checkpoint)
    config = dataclasses.replace(config, checkpoint=path)
    index = jann.load(path)                       # raises CheckpointError if not complete
    version = current_version(path)
    log = _WriteLog(path, version)
    index, replayed = log.replay(index)
    service = SearchService(index, config, version, log)
    seconds = service.warm(index)
    return service, {"checkpoint_version": version, "replayed": replayed, "warm_s": seconds}


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InvalidInputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}"
                                ) from None
    return sock


def run(config: ServeConfig) -> int:
    """Serve until interrupted (SIGINT / SIGTERM); returns the exit code."""
    sock = _bind(config.host, config.port)        # fail fast, before loading and compiling
    with sock:
        service, info = load_service(config)
        state = service.current
        print(f"jann serve: {state.index.describe()} index, {state.ntotal} vectors, "
              f"d={service.d}, checkpoint {info['checkpoint_version']} + {info['replayed']} "
              f"logged writes; warmed buckets {list(config.buckets)} x k "
              f"{list(config.warm_k)} in {info['warm_s']:.1f} s", flush=True)
        if config.token is None and config.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"jann serve: warning: listening on {config.host} without a token: anyone "
                  "who can connect can add, remove and snapshot", file=sys.stderr, flush=True)
        sock.listen(2048)             # connections wait in the backlog until uvicorn runs
        host, port = sock.getsockname()[:2]
        server = uvicorn.Server(uvicorn.Config(
            create_app(service), log_level="warning", access_log=False,
            timeout_keep_alive=30, lifespan="on"))
        shown = f"[{host}]" if ":" in host else host
        print(f"jann serve: listening on http://{shown}:{port}", flush=True)
        server.run(sockets=[sock])
    return 0
