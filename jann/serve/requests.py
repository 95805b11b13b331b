"""Request bodies of `jann serve`: reading a JSON body under a size limit, the fields
(vectors, ids, id filter, search parameters) validated with the library's own checks and
messages, and the JSON error responses ({"error": {"type", "message"}})."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import numpy as np
from starlette.responses import JSONResponse

import jann
from jann._inputs import as_vectors, check_finite
from jann.errors import DuplicateIdError, IdNotFoundError, InvalidInputError, JannError
from jann.ops.distances import NAN_TOLERANT

# Request bodies above this size are decoded in a worker thread, off the event loop.
_INLINE_JSON_BYTES = 256 << 10
# Search-parameter names that would collide with jann.search's own arguments.
_RESERVED_PARAMS = frozenset({"index", "xq", "k", "selector"})


# ------------------------------------------------------------------------- errors
class HTTPError(Exception):
    """A request error with its HTTP status, answered as {"error": {type, message}}."""

    def __init__(self, status: int, message: str, kind: str = "BadRequest"):
        super().__init__(message)
        self.status, self.kind = status, kind


def status_of(exc: JannError) -> int:
    if isinstance(exc, DuplicateIdError):
        return 409
    if isinstance(exc, IdNotFoundError):
        return 404
    return 422


def error_response(status: int, kind: str, message: str, headers=None) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status,
                        headers=headers)


# -------------------------------------------------------------- request parsing
def check_params(params: dict) -> dict:
    for name, value in params.items():
        if not isinstance(name, str) or not name.isidentifier() or name in _RESERVED_PARAMS:
            raise InvalidInputError(f"invalid search parameter name {name!r}")
        if not isinstance(value, (int, float, str, bool)):
            raise InvalidInputError(
                f"search parameter {name} must be a number, string or boolean, got "
                f"{type(value).__name__}")
    return params


def body_field(body: dict, name: str, default=dataclasses.MISSING):
    if name in body:
        return body[name]
    if default is dataclasses.MISSING:
        raise InvalidInputError(f"the request needs a {name!r} field")
    return default


def parse_vectors(value, d: int, metric: str, name: str = "vectors") -> np.ndarray:
    """JSON rows as a validated (n, d) float32 array, with the library's messages."""
    if isinstance(value, list) and not value:
        return np.zeros((0, d), np.float32)
    if not isinstance(value, list) or not all(isinstance(row, list) for row in value):
        raise InvalidInputError(f"{name} must be a list of rows (a 2-D array (n, d))")
    # numbers only: numpy would turn "0.5" and true into floats, which the library refuses
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool)
               for row in value for v in row):
        raise InvalidInputError(f"{name} must hold numbers only (no strings, booleans, "
                                "nested lists or nulls)")
    try:
        x = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        raise InvalidInputError(
            f"{name} must be a 2-D array of numbers with rows of equal length") from None
    x = np.asarray(as_vectors(x, d, name), np.float32)
    check_finite(x, name, allow_nan=metric in NAN_TOLERANT)
    return x


def parse_ids(value, name: str = "ids") -> np.ndarray:
    if not isinstance(value, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in value):
        raise InvalidInputError(f"{name} must be a list of integers")
    try:
        return np.asarray(value, np.int64).reshape(-1)
    except OverflowError:
        raise InvalidInputError(f"{name} must fit in 64-bit integers") from None


def parse_selector(value):
    """The request's id filter as a jann selector: {"ids": [...]} or {"range": [lo, hi]}."""
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) != 1 or not {"ids", "range"} & set(value):
        raise InvalidInputError(
            'filter must be {"ids": [id, ...]} or {"range": [imin, imax]}')
    if "ids" in value:
        return jann.IDSelectorBatch(parse_ids(value["ids"], "filter ids"))
    bounds = value["range"]
    if not isinstance(bounds, list) or len(bounds) != 2:
        raise InvalidInputError('filter range must be [imin, imax]')
    lo, hi = parse_ids(bounds, "filter range")
    return jann.IDSelectorRange(lo, hi)


# ------------------------------------------------------------------------- bodies
async def read_json(request, limit: int) -> dict:
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
        raise HTTPError(413, f"request body of {max(size, int(declared or 0))} bytes is "
                             f"above the server's limit of {limit} bytes (--max-body-bytes)",
                        "PayloadTooLarge")
    data = b"".join(chunks)
    try:
        # Large bodies are decoded off the event loop, which keeps serving meanwhile.
        body = await asyncio.to_thread(json.loads, data) if size > _INLINE_JSON_BYTES else \
            json.loads(data)
    except ValueError as exc:                        # includes UnicodeDecodeError
        raise HTTPError(400, f"malformed JSON: {exc}", "MalformedJSON") from None
    except RecursionError:
        raise HTTPError(400, "malformed JSON: nested too deeply", "MalformedJSON") from None
    if not isinstance(body, dict):
        raise HTTPError(400, f"the body must be a JSON object, got {type(body).__name__}",
                        "MalformedJSON")
    return body
