"""The OpenAPI document, with request bodies described by msgspec's own JSON Schema.

Litestar's generator drops `minimum` on optional constrained fields and never emits
`additionalProperties: false`; msgspec's schema for the same Structs has both, so the
request components are replaced by it. The document is then exactly what validation enforces.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Litestar

from gateway.domain.requests import ImageToImageRequest, InpaintRequest, TextToImageRequest

REQUEST_STRUCTS = (TextToImageRequest, ImageToImageRequest, InpaintRequest)


def openapi_document(app: Litestar) -> dict[str, Any]:
    """The whole document as a JSON-ready dict, stable across runs."""
    doc: dict[str, Any] = app.openapi_schema.to_schema()
    _, components = msgspec.json.schema_components(REQUEST_STRUCTS, ref_template="#/components/schemas/{name}")
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in components.items():
        schemas[name] = schema
    return doc


def encode_document(doc: dict[str, Any]) -> bytes:
    """Sorted, indented JSON with a final newline: diffs of the committed file stay readable."""
    return msgspec.json.format(msgspec.json.encode(doc, order="sorted"), indent=2) + b"\n"
