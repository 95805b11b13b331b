"""The OpenAPI 3.1 description of `jann serve` (GET /openapi.json)."""

from __future__ import annotations

import jann
from jann.serve.service import SearchService



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
                       "jann.search, e.g. {\"nprobe\": 16}; those not given are the "
                       "server's (jann serve --param), else jann.search's defaults",
                       "default": dict(service.config.warm_params),
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
        "/remove": {"post": {"summary": "remove ids (jann.remove_ids); a sequentially "
                             "numbered Flat index renumbers the rest 0..n-1 (FAISS "
                             "IndexFlat), the other indexes keep ids and never give "
                             "one out again",
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
