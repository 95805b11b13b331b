"""SearchService: the served index and everything around it, without HTTP: request
batching, index versions swapped whole, writes through the write-ahead log, snapshots,
compilation warm-up and statistics."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np

import jann
from jann.errors import InvalidInputError, JannError
from jann.serve.config import ServeConfig
from jann.serve.write_log import WriteLog, apply_write

# Latency percentiles in /stats are over this many most recent requests per endpoint.
LATENCY_WINDOW = 10_000
# A write that takes the index past its capacity doubles it, and the searches of the new
# shapes must compile before it is served: 5.6 s on a 10k x 128 Flat and 11.5 s on
# IVF256,Flat at 20k rows (2 cores, benchmarks/serve_growth.py), every write waiting. Once the
# index is this full, a background thread compiles the next capacity's warm searches and
# adds of the last GROW_AHEAD_ADD_SIZES batch sizes written instead (holding one grown
# copy of the index meanwhile); the growing write then finds them compiled.
GROW_AHEAD_FILL = 0.5
GROW_AHEAD_ADD_SIZES = 4


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


def _params_key(params: dict) -> tuple:
    # 1, 1.0 and True compare equal; the type keeps them in separate batches.
    return tuple(sorted((k, type(v).__name__, v) for k, v in params.items()))


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
                 log: WriteLog):
        self.config = config
        self.d = index.d
        self.metric = index.metric
        self._log = log
        self._state_lock = threading.Lock()
        self._state = _Version(index, 0, jann.ntotal(index), checkpoint_version)
        self._search_pool = ThreadPoolExecutor(1, thread_name_prefix="jann-search")
        self._write_pool = ThreadPoolExecutor(1, thread_name_prefix="jann-write")
        self._grow_pool = ThreadPoolExecutor(1, thread_name_prefix="jann-grow")
        self._growing = None
        self._add_sizes: collections.deque[int] = collections.deque([1], GROW_AHEAD_ADD_SIZES)
        self._grown_ahead: set = set()
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
            for bucket in self.config.buckets_of(index):
                D, _ = jann.search(index, np.zeros((bucket, self.d), np.float32), k, **params)
                D.block_until_ready()
        self._warmed.add(signature)
        return time.perf_counter() - start

    def grow_ahead(self, index) -> None:
        """Once `index` is GROW_AHEAD_FILL full, compile in the background what the write
        that doubles it will need (a no-op while such a compile runs or once done)."""
        if (self._growing is not None and not self._growing.done()) or \
                jann.ntotal(index) < GROW_AHEAD_FILL * index.capacity:
            return
        plan = (_signature(index), frozenset(self._add_sizes))
        if plan not in self._grown_ahead:
            self._grown_ahead.add(plan)
            self._growing = self._grow_pool.submit(self._compile_grown, index, plan[1])

    def _compile_grown(self, index, add_sizes) -> None:
        grown = jann.reserve(index, index.capacity - jann.ntotal(index) + 1)
        for n in add_sizes:
            ids = None if grown.id_mode == "sequential" else np.arange(n) + 2**30
            with contextlib.suppress(JannError):  # a taken id: the rest still compiles
                apply_write(grown, "add", np.zeros((n, self.d), np.float32), ids)
        self.warm(grown)

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
        self._grow_pool.shutdown(wait=True)
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
        if op == "add" and vectors.shape[0] not in self._add_sizes:
            self._add_sizes.append(vectors.shape[0])
        index, info = apply_write(state.index, op, vectors, ids)
        if info.get("removed", info.get("added")) == 0:  # nothing changed: nothing to log
            return {**info, "version": state.version, "ntotal": state.ntotal, "durable": True}
        if self._growing is not None and _signature(index) not in self._warmed:
            self._growing.exception()         # wait: these shapes may be compiling already
        self.warm(index)                      # compile off the request path, before the swap
        self._log.append(op, vectors, ids)
        new = self._publish(index)
        self.grow_ahead(index)
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
            "compiled": {"buckets": list(self.config.buckets_of(state.index)),
                         "warm_k": list(self.config.warm_k),
                         "warm_params": dict(self.config.warm_params),
                         "index_shapes_warmed": len(self._warmed),
                         "request_compiles": self.counters["request_compiles"]},
            "requests": {name: dict(counts) for name, counts in self.requests.items()},
            "latency": {name: _percentiles(list(values))
                        for name, values in self.latency.items()},
            "uptime_s": time.time() - self._started,
        }
