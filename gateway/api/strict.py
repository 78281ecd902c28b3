"""Strict request-body decoding.

Litestar converts `data` leniently (`"n": "2"` would become 2). Before a handler runs, this hook
decodes the JSON body strictly into the handler's declared `data` type; a type error or a
malformed document becomes a problem+json answer naming the field. Litestar then decodes the
same (already valid) body for the handler, which costs microseconds with msgspec.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec
from litestar import Request

from gateway.errors import MalformedBody, ValidationFailed, field_errors_from_msgspec


@cache
def _decoder(annotation: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(annotation, strict=True)


def is_json(request: Request[Any, Any, Any]) -> bool:
    """Whether the body is declared JSON: what strict decoding, and the generation routes' JSON path, take."""
    return request.headers.get("content-type", "").startswith("application/json")


async def decode_strictly(request: Request[Any, Any, Any]) -> None:
    """`before_request` hook: validate the JSON body against the handler's `data` type."""
    await strict_body(request)


async def strict_body(request: Request[Any, Any, Any]) -> msgspec.Struct | None:
    """The JSON body decoded strictly into the handler's `data` type (a Struct); None when the route
    takes no such body or the request is not JSON. Errors are problems naming the field."""
    handler = request.scope["route_handler"]
    field = handler.parsed_fn_signature.parameters.get("data")
    if field is None or not is_json(request):
        return None
    annotation = field.annotation
    if not (isinstance(annotation, type) and issubclass(annotation, msgspec.Struct)):
        return None
    body = await request.body()
    try:
        decoded: msgspec.Struct = _decoder(annotation).decode(body)
    except msgspec.ValidationError as exc:
        decoded = _integral_floats_as_ints(body, annotation, exc)
    except msgspec.DecodeError as exc:
        raise MalformedBody(f"The body is not valid JSON: {exc}") from exc
    return decoded


def _integral(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integral(v) for v in value]
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    return value


def _integral_floats_as_ints(body: bytes, annotation: Any, error: msgspec.ValidationError) -> Any:
    """JSON has one number type: `2.0` is the integer 2 (the document's `type: integer` admits it),
    which msgspec's strict mode refuses. Only a body that failed the strict decode pays for this
    second pass; a string for a number stays an error, as does 2.5 for an integer."""
    try:
        return msgspec.convert(_integral(msgspec.json.decode(body)), annotation, strict=True)
    except msgspec.ValidationError as exc:
        errors = field_errors_from_msgspec(str(exc))
        raise ValidationFailed(
            "; ".join(f"{e.field}: {e.message}" if e.field else e.message for e in errors), errors=errors
        ) from error
