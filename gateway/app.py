"""`create_app(settings)`: wiring and lifespan only."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from typing import Any

from litestar import Litestar, Request
from litestar.config.response_cache import ResponseCacheConfig
from litestar.datastructures import MutableScopeHeaders
from litestar.di import Provide
from litestar.routes import HTTPRoute
from litestar.types import Message, Scope

from gateway import dashboard
from gateway.api import (
    admin,
    admin_billing,
    admin_engines,
    admin_keys,
    blobs,
    files,
    health,
    images,
    jobs,
    keys,
    openai_compat,
    usage,
    webhooks,
)
from gateway.api.strict import decode_strictly
from gateway.auth.guard import authorize, current_principal
from gateway.auth.keys import KeyAuthenticator
from gateway.config import Settings, otel_environment
from gateway.db.embedded import EmbeddedPostgres, start_embedded
from gateway.db.migrations import apply_migrations
from gateway.db.pool import create_pool
from gateway.errors import handle_exception
from gateway.metrics import Metrics
from gateway.observability.middleware import RequestContext
from gateway.observability.tracing import setup_tracing, shutdown_tracing
from gateway.openapi import docs_assets, openapi_config
from gateway.state import Services

log = logging.getLogger(__name__)


async def _database_url(settings: Settings) -> tuple[str, EmbeddedPostgres | None]:
    if settings.database_url:
        return settings.database_url, None
    embedded = await asyncio.to_thread(start_embedded, settings.data_path)
    return embedded.uri, embedded


@contextlib.asynccontextmanager
async def _lifespan(app: Litestar) -> AsyncIterator[None]:
    from gateway.bootstrap import build_services, close_services  # noqa: PLC0415 - heavy imports at start only

    settings: Settings = app.state.settings
    tracing = setup_tracing(otel_environment(), service_name="image-gateway")  # None unless OTEL_* ask for it
    dsn, embedded = await _database_url(settings)
    try:
        pool = await create_pool(
            dsn,
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
            statement_cache_size=settings.db_statement_cache_size,
        )
        async with pool.acquire() as conn:
            await apply_migrations(conn)
        metrics = Metrics()
        auth = KeyAuthenticator(pool=pool, ttl_s=settings.key_cache_ttl_s)
        services = await build_services(settings, pool=pool, metrics=metrics, auth=auth, embedded=embedded, dsn=dsn)
        app.state.services = services
        try:
            yield
        finally:
            await close_services(services)
            await pool.close()
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        shutdown_tracing(tracing)


def _provide_services(request: Request[Any, Any, Any]) -> Services:
    services: Services = request.app.state.services
    return services


async def _add_rate_headers(message: Message, scope: Scope) -> None:
    """Every authenticated answer carries the caller's RateLimit-* headers."""
    if message["type"] == "http.response.start":
        rate = scope.get("state", {}).get("rate_headers")
        if rate:
            headers = MutableScopeHeaders.from_message(message)
            for name, value in rate.items():
                headers[name] = value


async def _allow_every_method(message: Message, scope: Scope) -> None:
    """OPTIONS answers `Allow` with every method of the path. Litestar's automatic OPTIONS handler
    lists only the methods its path had when that handler was made, so `/v1/keys` said
    `OPTIONS, POST` without GET: the list comes from the finished route table instead."""
    if message["type"] == "http.response.start" and scope.get("method") == "OPTIONS":
        allowed = _allowed_methods(scope["app"]).get(scope.get("path_template", ""))
        if allowed:
            MutableScopeHeaders.from_message(message)["Allow"] = allowed


@functools.cache
def _allowed_methods(app: Litestar) -> dict[str, str]:
    return {route.path: ", ".join(sorted(route.methods)) for route in app.routes if isinstance(route, HTTPRoute)}


def max_request_body(settings: Settings) -> int:
    """The largest request body worth reading: two base64-encoded inputs at the size limit."""
    return 2 * (settings.max_input_bytes * 4 // 3 + 4) + 1024 * 1024


def create_app(settings: Settings) -> Litestar:
    """The ASGI application for `settings`. Resources are built in the lifespan."""
    app = Litestar(
        route_handlers=[
            *health.routes,
            *images.routes,
            *jobs.routes,
            *files.routes,
            *blobs.routes,
            *keys.routes,
            *usage.routes,
            *admin.routes,
            *admin_keys.routes,
            docs_assets(),
            *admin_engines.routes,
            *webhooks.routes,
            *openai_compat.routes,
            dashboard.router(),
            *admin_billing.routes,
        ],
        dependencies={
            "services": Provide(_provide_services, sync_to_thread=False),
            "principal": Provide(current_principal, sync_to_thread=False),
        },
        guards=[authorize],
        before_request=decode_strictly,
        before_send=[_add_rate_headers, _allow_every_method],
        exception_handlers={Exception: handle_exception},
        lifespan=[_lifespan],
        openapi_config=openapi_config(),
        response_cache_config=ResponseCacheConfig(),
        # Litestar's default (10 MB) would refuse inputs our own limits allow: an image and a mask
        # of `max_input_bytes` each, base64 in JSON (4/3), with room for the other fields.
        request_max_body_size=max_request_body(settings),
        template_config=dashboard.template_config(),
        # The process owns logging (gateway/observability/logs.py); Litestar's default would replace the
        # root logger's handler with its own plain-text one.
        logging_config=None,
        debug=False,
    )
    app.state.settings = settings
    # Outermost, around routing and error handling (where the `middleware` list does not reach), so
    # that a 404 carries its X-Request-Id too; it also opens each request's trace span.
    app.asgi_handler = RequestContext(app.asgi_handler)
    return app
