"""The HTTP side of `jann serve`: the Starlette application that puts a SearchService
behind the endpoints /search, /add, /remove, /snapshot, /health, /stats and /openapi.json.

Every route handler is wrapped by `_endpoint`, which checks the token of writes, turns
errors into JSON error responses, keeps the connection in sync and records the request
in the service's statistics."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
import traceback

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.routing import Route

from jann._inputs import id_dtype
from jann.errors import InvalidInputError, JannError
from jann.ops.topk import check_k
from jann.serve.openapi import openapi_document
from jann.serve.requests import (
    HTTPError, body_field, check_params, error_response, parse_ids, parse_selector,
    parse_vectors, read_json, status_of)
from jann.serve.service import SearchService


def _json_floats(a: np.ndarray) -> list:
    """float rows for JSON: missing results (+-inf) become null (JSON has no infinity)."""
    out = a.astype(object)
    out[~np.isfinite(a)] = None
    return out.tolist()


# ------------------------------------------------------------------ route handlers
async def _search(service: SearchService, request) -> JSONResponse:
    config = service.config
    body = await read_json(request, config.max_body_bytes)
    xq = parse_vectors(body_field(body, "vectors"), service.d, service.metric)
    if xq.shape[0] > config.max_queries:
        raise InvalidInputError(f"at most {config.max_queries} queries per request "
                                f"(--max-queries), got {xq.shape[0]}")
    k = check_k(body_field(body, "k", 10))
    if k > config.max_k:
        raise InvalidInputError(f"k={k} is above the server's limit max_k={config.max_k}")
    params = body_field(body, "params", {})
    if not isinstance(params, dict):
        raise InvalidInputError("params must be an object of search parameters")
    selector = parse_selector(body_field(body, "filter", None))
    # `jann serve --param` values are the defaults of the requests that do not name them
    params = {**dict(config.warm_params), **check_params(params)}
    if xq.shape[0]:
        D, I, state = await service.search(xq, k, params, selector)
    else:                                         # nothing to search (and nothing to compile)
        D, I = np.zeros((0, k), np.float32), np.zeros((0, k), id_dtype())
        state = service.current
    return JSONResponse({"distances": _json_floats(D), "ids": I.tolist(),
                         "version": state.version, "ntotal": state.ntotal,
                         "metric": service.metric, "id_dtype": I.dtype.name})


async def _add(service: SearchService, request) -> JSONResponse:
    body = await read_json(request, service.config.max_body_bytes)
    vectors = await asyncio.to_thread(parse_vectors, body_field(body, "vectors"), service.d,
                                      service.metric)
    ids = body_field(body, "ids", None)
    ids = None if ids is None else parse_ids(ids)
    return JSONResponse(await service.write("add", vectors, ids))


async def _remove(service: SearchService, request) -> JSONResponse:
    body = await read_json(request, service.config.max_body_bytes)
    return JSONResponse(await service.write("remove", None, parse_ids(body_field(body, "ids"))))


async def _snapshot(service: SearchService, request) -> JSONResponse:
    return JSONResponse(await service.snapshot())


async def _health(service: SearchService, request) -> JSONResponse:
    return JSONResponse(service.health())


async def _stats(service: SearchService, request) -> JSONResponse:
    stats = service.stats()
    if not _is_authorized(service.config.token, request):  # where the files are: owners only
        stats["checkpoint"].pop("path", None)
    return JSONResponse(stats)


# ------------------------------------------------------------------------ wrapping
def _is_authorized(token: str | None, request) -> bool:
    if token is None:
        return True
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                              token.encode())


def _authorize(token: str | None, request) -> None:
    if not _is_authorized(token, request):
        raise HTTPError(401, "this endpoint needs 'Authorization: Bearer <token>' with "
                             "the server's token", "Unauthorized")


def _endpoint(service: SearchService, name: str, handler, *, write: bool = False):
    """The Starlette endpoint running `handler(service, request)` as the `name` endpoint:
    writes need the token, errors become JSON error responses, and the request is counted
    (and timed, when it succeeds) in the service's statistics."""
    async def run(request):
        start = time.perf_counter()
        request.state.body_read = False
        try:
            if write:
                _authorize(service.config.token, request)
            response = await handler(service, request)
        except HTTPError as exc:
            response = error_response(
                exc.status, exc.kind, str(exc),
                {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None)
        except JannError as exc:
            response = error_response(status_of(exc), type(exc).__name__, str(exc))
        except Exception as exc:                     # a bug: say so, keep serving
            traceback.print_exc()
            response = error_response(500, type(exc).__name__, f"internal error: {exc}")
        if not request.state.body_read and request.method == "POST":
            with contextlib.suppress(Exception):      # keep the connection in sync
                async for _ in request.stream():
                    pass
        service.requests[name][str(response.status_code)] += 1
        if response.status_code < 400:
            service.latency[name].append(time.perf_counter() - start)
        return response
    return run


def create_app(service: SearchService) -> Starlette:
    """The ASGI application serving `service`."""
    document = openapi_document(service)

    async def openapi(_service, request):
        return JSONResponse(document)

    async def http_error(request, exc: HTTPException):
        service.requests["other"][str(exc.status_code)] += 1
        return error_response(exc.status_code, "HTTPError",
                              f"{exc.detail}: {request.method} {request.url.path}")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.start()
        yield
        await service.stop()

    routes = [
        Route("/search", _endpoint(service, "search", _search), methods=["POST"]),
        Route("/add", _endpoint(service, "add", _add, write=True), methods=["POST"]),
        Route("/remove", _endpoint(service, "remove", _remove, write=True), methods=["POST"]),
        Route("/snapshot", _endpoint(service, "snapshot", _snapshot, write=True),
              methods=["POST"]),
        Route("/health", _endpoint(service, "health", _health), methods=["GET"]),
        Route("/stats", _endpoint(service, "stats", _stats), methods=["GET"]),
        Route("/openapi.json", _endpoint(service, "openapi", openapi), methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error},
                     lifespan=lifespan)
