"""Liveness, readiness and metrics."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, get
from litestar.di import NamedDependency

from gateway.db.migrations import pending_migrations
from gateway.db.outage import RETRY_AFTER_S
from gateway.db.types import DATABASE_ERRORS
from gateway.errors import DatabaseUnavailable, ServiceUnavailable
from gateway.metrics import OPENMETRICS, OPENMETRICS_TYPE
from gateway.state import Services


class Health(msgspec.Struct):
    status: str


class Readiness(msgspec.Struct):
    status: str
    database: str
    pending_migrations: list[str]


@get("/healthz", operation_id="checkLiveness", summary="Liveness", tags=["operations"], exclude_from_auth=True)
async def healthz() -> Health:
    """The process is up and serving requests."""
    return Health(status="ok")


@get(
    "/readyz",
    operation_id="checkReadiness",
    opt={"problems": {503: "The database is unreachable, or migrations are pending (`pending_migrations`)."}},
    summary="Readiness",
    tags=["operations"],
    exclude_from_auth=True,
)
async def readyz(services: NamedDependency[Services]) -> Readiness:
    """The database answers and every migration is applied."""
    try:
        async with services.pool.acquire() as conn:
            pending = await pending_migrations(conn)
    except DATABASE_ERRORS as exc:
        raise DatabaseUnavailable(
            f"database unreachable: {type(exc).__name__}", headers={"Retry-After": str(RETRY_AFTER_S)}
        ) from exc
    if pending:
        raise ServiceUnavailable("migrations pending", pending_migrations=pending)
    return Readiness(status="ready", database="ok", pending_migrations=[])


@get(
    "/metrics",
    operation_id="getMetrics",
    summary="Prometheus metrics",
    tags=["operations"],
    exclude_from_auth=True,
    media_type="text/plain",
)
async def metrics(services: NamedDependency[Services], request: Request[Any, Any, Any]) -> Response[Any]:
    """Prometheus text exposition format; OpenMetrics, with trace ids as exemplars on the engine
    latency histogram, for a scraper that asks for it (`Accept: application/openmetrics-text`)."""
    if OPENMETRICS in request.headers.get("accept", ""):
        return Response(services.metrics.render(openmetrics=True), media_type=OPENMETRICS_TYPE)
    return Response(services.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


routes = [healthz, readyz, metrics]
