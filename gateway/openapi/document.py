"""Finishing Litestar's skeleton into the whole contract.

Litestar documents each route's success body and parameters. What it cannot express is added
here, in one pass over the routes, from what the routes declare in `opt`:
- who may call (`exclude_from_auth`, `operator`, `scope`): the operation's `security`, its
  `x-required-scope`, and the answers authentication adds (401, 403, 429);
- `problems`: the route's own error answers (status -> when it happens);
and from the operation's shape: a body adds 400, 413, 415 and 422; parameters add 422; a path
parameter adds 404; every operation but liveness and metrics can answer 503 while the database is
unreachable, and any operation 500. Each answer gets the headers the server sends with it.
`operations.py` holds what is particular to one operation (binary and event-stream bodies, 202,
links, examples).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Litestar
from litestar.routes import HTTPRoute

from gateway.api.jobs import JobStatus
from gateway.api.multipart import FILE_FIELDS, FILE_MEDIA_TYPES
from gateway.api.openai_shapes import OpenAIError
from gateway.domain.requests import ImageToImageRequest, InpaintRequest, TextToImageRequest
from gateway.errors import PROBLEM_JSON, Problem
from gateway.openapi import operations
from gateway.openapi.config import API_VERSION
from gateway.openapi.headers import HEADERS, header

# msgspec's JSON Schema for these (and every request body Struct) replaces Litestar's: Litestar
# drops `minimum` on optional constrained fields and never emits `additionalProperties: false`, so
# the document would accept what validation refuses.
COMPONENT_STRUCTS = (TextToImageRequest, ImageToImageRequest, InpaintRequest, Problem, OpenAIError, JobStatus)
REF = "#/components/schemas/{name}"

# Operations that answer without touching the database.
_NO_DATABASE = frozenset({"checkLiveness", "getMetrics"})

_DESCRIPTIONS = {
    400: "The body is not valid JSON, or the form cannot be parsed.",
    401: "No key, or a malformed, unknown, expired or revoked one, or the key's tenant is suspended.",
    403: "The key may not call this: it lacks the scope, or it is the other kind of key (tenant or operator).",
    404: "No such resource (or it belongs to another tenant).",
    413: "The body is larger than the gateway accepts.",
    415: "The body's Content-Type is not one this operation takes.",
    422: "A field or parameter is invalid; `errors` names each one.",
    429: "The key's rate limit is spent, or this address made too many failed authentications "
    "(`limit`: `failed_authentications`): retry after `Retry-After` seconds.",
    500: "An unexpected error; it has been logged.",
    503: "The database is unreachable or restarting (`database-unavailable`): retry after `Retry-After` seconds.",
}


@dataclass(frozen=True)
class Route:
    """One documented operation, with what its handler declares."""

    path: str
    method: str
    opt: dict[str, Any]
    body: type[msgspec.Struct] | None

    @property
    def public(self) -> bool:
        return bool(self.opt.get("exclude_from_auth"))

    @property
    def openai(self) -> bool:
        return self.path.startswith("/openai/")


def _routes(app: Litestar) -> Iterator[Route]:
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for method, (handler, _) in route.route_handler_map.items():
            if method in ("HEAD", "OPTIONS") or not handler.resolve_include_in_schema():
                continue
            data = handler.parsed_fn_signature.parameters.get("data")
            body = data.annotation if data is not None else None
            struct = body if isinstance(body, type) and issubclass(body, msgspec.Struct) else None
            yield Route(route.path_format or "/", method.lower(), handler.opt, struct)


def openapi_document(app: Litestar) -> dict[str, Any]:
    """The whole document as a JSON-ready dict, stable across runs."""
    doc: dict[str, Any] = app.openapi_schema.to_schema()
    routes = list(_routes(app))
    bodies = {route.body for route in routes if route.body is not None}
    structs = (*COMPONENT_STRUCTS, *sorted(bodies, key=lambda t: t.__name__))
    _, components = msgspec.json.schema_components(structs, ref_template=REF)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(components)
    # errors.py sits below the api package, so Problem types its `job` as Any; it is a JobView.
    schemas["Problem"]["properties"]["job"] = {
        "$ref": REF.format(name="JobView"),
        "description": "A failed synchronous generation: the job, with its attempts.",
    }
    doc["info"].update(
        version=API_VERSION,
        license={"name": "Apache-2.0", "identifier": "Apache-2.0"},
        contact={"name": "Image Gateway maintainers", "url": "https://gateway.invalid/support"},
    )
    doc["servers"] = [{"url": "/", "description": "This gateway (the document's own origin)."}]
    doc["tags"] = operations.TAGS
    for route in routes:
        operation = doc["paths"][route.path][route.method]
        _finish_operation(operation, route)
        if route.opt.get("forms"):
            _add_form(operation, schemas)
        operations.particular(operation)
    text = msgspec.json.encode(doc["paths"]).decode()
    doc["components"]["headers"] = {n: h for n, h in HEADERS.items() if f'"#/components/headers/{n}"' in text}
    return doc


def _add_form(operation: dict[str, Any], schemas: dict[str, Any]) -> None:
    """The second encoding of a JSON body Struct: multipart/form-data, one part a field, the image
    fields as files or as the same text JSON takes (gateway/api/multipart.py). Its schema is a
    component of its own (the Struct's, with the image fields widened), not an allOf of the two:
    client generators cannot merge a property's types across allOf."""
    content = operation["requestBody"]["content"]
    name = content["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    form = copy.deepcopy(schemas[name])
    form["title"] = f"{name}Form"
    fields = sorted(f for f in FILE_FIELDS if f in form["properties"])
    for field in fields:
        text = form["properties"][field]
        form["properties"][field] = {
            "description": text.get("description", ""),
            # anyOf: a text value is also a string, so the two overlap.
            "anyOf": [{"type": "string", "format": "binary"}, {k: v for k, v in text.items() if k != "description"}],
        }
    schemas[f"{name}Form"] = form
    content["multipart/form-data"] = {
        "schema": {"$ref": REF.format(name=f"{name}Form")},
        "encoding": {field: {"contentType": FILE_MEDIA_TYPES} for field in fields},
    }


def _finish_operation(operation: dict[str, Any], route: Route) -> None:
    responses: dict[str, Any] = operation["responses"]
    responses.pop("400", None)  # Litestar's own 400 schema: the server answers problem+json instead
    statuses: dict[int, str] = {500: _DESCRIPTIONS[500]}
    if operation["operationId"] not in _NO_DATABASE:
        statuses[503] = _DESCRIPTIONS[503]
    if not route.public:
        statuses.update({s: _DESCRIPTIONS[s] for s in (401, 403, 429)})
        operation["x-required-scope"] = route.opt.get("scope") or ("operator" if route.opt.get("operator") else None)
        who = (
            "an operator key"
            if route.opt.get("operator")
            else f"a tenant key with the scope `{route.opt['scope']}`"
            if route.opt.get("scope")
            else "a tenant key"
        )
        operation["description"] = f"{operation.get('description', '').rstrip()}\n\nNeeds {who}.".lstrip()
        if operation["x-required-scope"] is None:
            del operation["x-required-scope"]
    else:
        operation["security"] = []
    parameters = operation.get("parameters", [])
    if "requestBody" in operation:
        statuses.update({s: _DESCRIPTIONS[s] for s in (400, 413, 415, 422)})
    if parameters:
        statuses[422] = _DESCRIPTIONS[422]
    if any(p["in"] == "path" for p in parameters):
        statuses[404] = _DESCRIPTIONS[404]
    statuses.update(route.opt.get("problems", {}))
    if route.openai:
        statuses.pop(422, None)  # answered as 400, OpenAI's status for an invalid request
    for code, description in sorted(statuses.items()):
        responses[str(code)] = _error_response(code, description, route)
    for key, response in responses.items():
        _add_headers(int(key), response, route)


def _error_response(status: int, description: str, route: Route) -> dict[str, Any]:
    if route.openai:
        # The OpenAI-compatible routes answer in OpenAI's error shape; its clients expect 400, not 422.
        schema, media = {"$ref": REF.format(name="OpenAIError")}, "application/json"
    else:
        schema, media = {"$ref": REF.format(name="Problem")}, PROBLEM_JSON
    return {"description": description, "content": {media: {"schema": schema}}}


def _add_headers(status: int, response: dict[str, Any], route: Route) -> None:
    headers: dict[str, Any] = response.setdefault("headers", {})
    # Every answer carries it (gateway/observability/): the whole app is wrapped.
    headers["X-Request-Id"] = header("X-Request-Id", required=True)
    if not route.public and status not in (401, 403):
        # The guard sets them once it has the key; a 401/403 is refused before that.
        for name in ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"):
            headers.setdefault(name, header(name))
    if status == 429:
        headers["Retry-After"] = header("Retry-After", required=True)
    if status == 503:
        headers.setdefault("Retry-After", header("Retry-After"))
    if status == 401:
        headers.setdefault("WWW-Authenticate", header("WWW-Authenticate", required=True))


def encode_document(doc: dict[str, Any]) -> bytes:
    """Sorted, indented JSON with a final newline: diffs of the committed file stay readable."""
    return msgspec.json.format(msgspec.json.encode(doc, order="sorted"), indent=2) + b"\n"
