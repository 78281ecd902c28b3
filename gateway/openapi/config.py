"""How the document and its docs UI are served: both public, both from this process (no CDN)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import swagger_ui_bundle  # type: ignore[import-untyped]
from litestar import Request
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.router import Router
from litestar.static_files import create_static_files_router

API_VERSION = "1.0.0"
# The docs UI loads Swagger UI from the `swagger-ui-bundle` wheel, served by the gateway itself:
# no CDN, so /schema/docs works on an air-gapped host and leaks nothing to a third party.
DOCS_ASSETS = "/schema/assets"
_SWAGGER_DIR = Path(swagger_ui_bundle.swagger_ui_path)


class FinishedDocument(JsonRenderPlugin):
    """/schema/openapi.json: the finished document (what openapi/gateway.json commits), not
    Litestar's skeleton, so that clients and fuzzers read the whole contract."""

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        state = request.app.state
        cached: bytes | None = state.get("openapi_document")
        if cached is None:
            from gateway.openapi.document import encode_document, openapi_document  # noqa: PLC0415 - cycle

            cached = encode_document(openapi_document(request.app))
            state["openapi_document"] = cached
        return cached


def openapi_config() -> OpenAPIConfig:
    """The document's metadata, its two accepted key headers, and the self-hosted docs UI."""
    return OpenAPIConfig(
        title="Image Gateway API",
        version=API_VERSION,
        description=(
            "One normalized API for text-to-image, image-to-image and inpainting across engines.\n\n"
            "Authenticate with a key as `Authorization: Bearer igw_...` or `X-Api-Key: igw_...`: tenant keys "
            "for `/v1/*` and `/openai/v1/*` (each operation names the scope it needs in `x-required-scope`), "
            "operator keys for `/v1/admin/*`. Errors are RFC 9457 `application/problem+json` with a stable "
            "`type`; a request that changes something can carry an `Idempotency-Key`. Every answer carries "
            "`X-Request-Id` (send your own to have it kept) and a W3C `traceparent` is continued."
        ),
        # The document and its UI are public: they describe the API, they don't grant access to it.
        # Its helper routes (the UI, the JSON, the not-found page) are not operations of the API.
        openapi_router=Router(
            path="/schema", route_handlers=[], opt={"exclude_from_auth": True}, include_in_schema=False
        ),
        components=Components(
            security_schemes={
                "bearer": SecurityScheme(
                    type="http",
                    scheme="bearer",
                    description="`Authorization: Bearer igw_...` (a tenant or operator key)",
                ),
                "apiKey": SecurityScheme(
                    type="apiKey",
                    name="X-Api-Key",
                    security_scheme_in="header",
                    description="`X-Api-Key: igw_...`, the same keys as `bearer`",
                ),
            }
        ),
        security=[{"bearer": []}, {"apiKey": []}],
        use_handler_docstrings=True,
        render_plugins=[
            FinishedDocument(),
            SwaggerRenderPlugin(
                path="/docs",
                js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                standalone_preset_js_url=f"{DOCS_ASSETS}/swagger-ui-standalone-preset.js",
                favicon=f"<link rel='icon' type='image/png' href='{DOCS_ASSETS}/favicon-32x32.png'>",
            ),
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
