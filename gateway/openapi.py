"""The OpenAPI document, with request bodies described by msgspec's own JSON Schema.

Litestar's generator drops `minimum` on optional constrained fields and never emits
`additionalProperties: false`; msgspec's schema for the same Structs has both, so the
request components are replaced by it. The document is then exactly what validation enforces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import swagger_ui_bundle  # type: ignore[import-untyped]
from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.router import Router
from litestar.static_files import create_static_files_router

from gateway.domain.requests import ImageToImageRequest, InpaintRequest, TextToImageRequest

REQUEST_STRUCTS = (TextToImageRequest, ImageToImageRequest, InpaintRequest)
API_VERSION = "1.0.0"
# The docs UI loads Swagger UI from the `swagger-ui-bundle` wheel, served by the gateway itself:
# no CDN, so /schema/docs works on an air-gapped host and leaks nothing to a third party.
DOCS_ASSETS = "/schema/assets"
_SWAGGER_DIR = Path(swagger_ui_bundle.swagger_ui_path)


def openapi_config() -> OpenAPIConfig:
    """The document's metadata, its two accepted key headers, and the self-hosted docs UI."""
    return OpenAPIConfig(
        title="Image Gateway API",
        version=API_VERSION,
        description="One normalized API for text-to-image, image-to-image and inpainting across engines.",
        # The document and its UI are public: they describe the API, they don't grant access to it.
        openapi_router=Router(path="/schema", route_handlers=[], opt={"exclude_from_auth": True}),
        components=Components(
            security_schemes={
                "bearer": SecurityScheme(type="http", scheme="bearer", description="`Authorization: Bearer igw_...`"),
                "apiKey": SecurityScheme(type="apiKey", name="X-Api-Key", security_scheme_in="header"),
            }
        ),
        security=[{"bearer": []}, {"apiKey": []}],
        render_plugins=[
            SwaggerRenderPlugin(
                path="/docs",
                js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                standalone_preset_js_url=f"{DOCS_ASSETS}/swagger-ui-standalone-preset.js",
                favicon=f"<link rel='icon' type='image/png' href='{DOCS_ASSETS}/favicon-32x32.png'>",
            )
        ],
    )


def docs_assets() -> Router:
    """Swagger UI's static files, public like the document they render."""
    return create_static_files_router(
        path=DOCS_ASSETS,
        directories=[_SWAGGER_DIR],
        opt={"exclude_from_auth": True},
        include_in_schema=False,
    )


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
