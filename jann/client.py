"""A Python client for `jann serve` with the library's search signature.

    from jann.client import Client
    with Client("http://127.0.0.1:8000", token="...") as c:
        D, I = c.search(xq, 10, nprobe=16)                     # numpy (nq, k), like jann.search
        D, I = c.search(xq, 10, selector=jann.IDSelectorBatch(ids))
        c.add(xb); c.remove([3, 7]); c.snapshot(); c.stats(); c.health()

    with ServerProcess("ckpt/", "--max-batch", "64") as server:   # a local server to try
        D, I = server.client().search(xq, 10)

HTTP goes through the standard library's http.client (no extra to install); importing
this module imports numpy and jann's error classes, not jax (~0.1 s). A Client may be
shared by threads: each thread keeps its own persistent (keep-alive) connection.
Errors the server reports for bad input are raised as the same jann exception the library
would raise (InvalidInputError, DuplicateIdError, ...); others as `ServerError`.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

import numpy as np

import jann.errors as errors
from jann.errors import InvalidInputError, JannError
from jann.ops.metric_names import is_similarity

__all__ = ["Client", "ServerError", "ServerProcess"]

# The server keeps idle connections 30 s; reconnect well before it drops ours, so a write
# is never sent on a connection that the server is closing.
_MAX_IDLE_S = 10.0


class ServerError(JannError):
    """An error response that is not a jann input error (auth, size, malformed, 5xx)."""

    def __init__(self, status: int, kind: str, message: str):
        super().__init__(f"HTTP {status} {kind}: {message}")
        self.status, self.kind = status, kind


def _jsonable_matrix(x, name: str) -> list:
    a = np.asarray(x)
    if a.ndim != 2:
        raise InvalidInputError(
            f"{name} must be a 2-D array (n, d), got shape {tuple(a.shape)}"
            + ("; use x[None, :] for a single vector" if a.ndim == 1 else ""))
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise errors.InvalidDtypeError(f"{name} must hold real numbers, got dtype {a.dtype}")
    # float32 -> Python float is exact, so the server sees the very same float32 values.
    return a.astype(np.float32).tolist()


def _selectors():
    """jann.selectors if it is imported (whoever made a jann selector imported it, and
    jax with it; the client alone does not), else None."""
    return sys.modules.get("jann.selectors")


def _filter(selector) -> dict | None:
    """A selector as the request's "filter" (ids or a range; other selectors refused)."""
    if selector is None:
        return None
    selectors = _selectors()
    if selectors and isinstance(selector, selectors.IDSelectorBatch):
        ids = np.asarray(selector.sorted_ids)[: int(selector.size)]
        return {"ids": ids.astype(np.int64).tolist()}
    if selectors and isinstance(selector, selectors.IDSelectorRange):
        return {"range": [int(selector.imin), int(selector.imax)]}
    if isinstance(selector, (list, tuple, np.ndarray)):
        return {"ids": np.asarray(selector, np.int64).reshape(-1).tolist()}
    raise InvalidInputError(
        "the server filters by jann.IDSelectorBatch / IDSelectorArray, IDSelectorRange or "
        f"a list of ids; got {type(selector).__name__}")


class Client:
    """Connection to a `jann serve` server at `url` (http only)."""

    def __init__(self, url: str = "http://127.0.0.1:8000", *, token: str | None = None,
                 timeout: float = 60.0):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise InvalidInputError(f"expected an http://host:port URL, got {url!r}")
        self.url = url
        self._host, self._port = parts.hostname, parts.port or 80
        self._token, self._timeout = token, timeout
        self._local = threading.local()

    # --- transport ---------------------------------------------------------------
    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and time.monotonic() - self._local.used > _MAX_IDLE_S:
            conn.close()
            conn = None
        if conn is None:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            self._local.conn = conn
        return conn

    def _request(self, method: str, path: str, body: dict | None = None, *,
                 retry: bool = False) -> dict:
        """JSON request -> JSON response; `retry` (idempotent requests only) resends once
        on a connection the server had closed."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        for attempt in (0, 1):
            conn = self._connection()
            try:
                conn.request(method, path, body=data, headers=headers)
                response = conn.getresponse()
                payload = response.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                conn.close()
                self._local.conn = None
                if not retry or attempt:
                    raise
        self._local.used = time.monotonic()
        if response.will_close:
            conn.close()
            self._local.conn = None
        try:
            result = json.loads(payload)
        except ValueError:
            raise ServerError(response.status, "InvalidResponse",
                              payload[:200].decode(errors="replace")) from None
        if response.status >= 400:
            error = result.get("error", {}) if isinstance(result, dict) else {}
            kind, message = error.get("type", "Error"), error.get("message", "")
            cls = getattr(errors, kind, None)
            if isinstance(cls, type) and issubclass(cls, JannError) and response.status < 500:
                raise cls(message)
            raise ServerError(response.status, kind, message)
        return result

    def close(self) -> None:
        """Close this thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- API -----------------------------------------------------------------------
    def search(self, xq, k: int, *, selector=None, **params):
        """(distances (nq, k) float32, ids (nq, k)) numpy arrays, as jann.search returns
        them for the served index; missing results are -1 / +inf (-inf for similarities)."""
        body = {"vectors": _jsonable_matrix(xq, "queries"), "k": k}
        if params:
            body["params"] = params
        chosen = _filter(selector)
        if chosen is not None:
            body["filter"] = chosen
        result = self._request("POST", "/search", body, retry=True)
        fill = -np.inf if is_similarity(result["metric"]) else np.inf
        ids = np.asarray(result["ids"], result["id_dtype"]).reshape(-1, k)
        distances = np.asarray(result["distances"], np.float64).reshape(-1, k)
        distances = np.where(np.isnan(distances), fill, distances).astype(np.float32)
        return distances, ids

    def add(self, x, ids=None) -> dict:
        """Add vectors (with ids for IDMap indexes); returns {"added", "first_id",
        "version", "ntotal", "durable"} once the write is logged."""
        body = {"vectors": _jsonable_matrix(x, "x")}
        if ids is not None:
            body["ids"] = np.asarray(ids).reshape(-1).tolist()
        return self._request("POST", "/add", body)

    def remove(self, ids) -> int:
        """Remove the given ids (or an IDSelectorBatch); returns the number removed."""
        selectors = _selectors()
        batch = selectors and isinstance(ids, selectors.IDSelectorBatch)
        chosen = _filter(ids if batch else list(np.ravel(ids)))
        if "ids" not in chosen:
            raise InvalidInputError("remove takes a list of ids or an IDSelectorBatch")
        return self._request("POST", "/remove", {"ids": chosen["ids"]})["removed"]

    def snapshot(self) -> dict:
        """Save the served index as a new checkpoint version; returns its description."""
        return self._request("POST", "/snapshot")

    def stats(self) -> dict:
        return self._request("GET", "/stats", retry=True)

    def health(self) -> dict:
        return self._request("GET", "/health", retry=True)


class ServerProcess:
    """`jann serve CHECKPOINT --port 0 *flags` in a subprocess of this Python, on loopback;
    returns once it accepts connections (`url`). For tests, benchmarks and notebooks.

    The server's output goes to `log` (by default a temporary file, deleted by `stop()`;
    see `output()`). `stop()` ends the server with SIGTERM, `kill()` with SIGKILL (a crash:
    no shutdown code runs).
    """

    def __init__(self, checkpoint, *flags: str, log=None, startup_timeout: float = 180.0):
        self._own_log = log is None
        if log is None:
            handle, log = tempfile.mkstemp(prefix="jann-serve-", suffix=".log")
            os.close(handle)
        self.log_path = os.fspath(log)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jann", "serve", os.fspath(checkpoint), "--port", "0",
             *flags], stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + startup_timeout
        while True:
            match = re.search(r"listening on (http://\S+:\d+)", self.output())
            if match:
                self.url = match.group(1)
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                output = self.output()
                self.stop()
                raise ServerError(0, "StartFailed", f"jann serve did not start:\n{output[-4000:]}")
            time.sleep(0.05)

    def output(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def client(self, token: str | None = None, **kwargs) -> Client:
        return Client(self.url, token=token, **kwargs)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._log.close()

    def stop(self, timeout: float = 60.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        if self._own_log and os.path.exists(self.log_path):
            os.remove(self.log_path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
