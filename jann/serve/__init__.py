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
  request pays compilation; those parameters are also the defaults of the requests that
  do not name them. Other k / parameters / filters compile once on first use
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

Modules:
    config.py     ServeConfig: the settings (the CLI flags) and their defaults
    requests.py   request bodies read and validated; JSON error responses
    write_log.py  the write-ahead log and the checkpoint directory's lock
    service.py    SearchService: batching, versions, writes, snapshots, statistics
    app.py        create_app: the Starlette application and its route handlers
    openapi.py    openapi_document: the OpenAPI description (GET /openapi.json)
    runner.py     load_service and run: load, replay, warm, bind, serve
"""

import importlib

# The web stack is an optional extra: name it, and the fix, when it is missing. Checked on
# every import of this package, before its modules load (they may be loaded already, from
# an earlier import of the package).
for _module in ("uvicorn", "starlette.applications", "starlette.exceptions",
                "starlette.responses", "starlette.routing"):
    try:
        importlib.import_module(_module)
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            f"jann serve needs the web server packages starlette and uvicorn (missing: "
            f"{exc.name}); install them with: pip install 'jann[serve]'", name=exc.name) from exc
del _module

from jann.serve.app import create_app
from jann.serve.config import ServeConfig
from jann.serve.openapi import openapi_document
from jann.serve.runner import load_service, run
from jann.serve.service import SearchService

__all__ = ["ServeConfig", "SearchService", "create_app", "load_service", "run",
           "openapi_document"]
