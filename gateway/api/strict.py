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
        errors = field_errors_from_msgspec(str(exc))
        raise ValidationFailed(
            "; ".join(f"{e.field}: {e.message}" if e.field else e.message for e in errors), errors=errors
        ) from exc
    except msgspec.DecodeError as exc:
        raise MalformedBody(f"The body is not valid JSON: {exc}") from exc
    return decoded
