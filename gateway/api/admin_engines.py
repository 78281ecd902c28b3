"""Operator view of the engines: /v1/admin/engines (operator keys only).

What the router knows right now about each configured engine: its breaker, its load against
its concurrency limit, and what it can serve. Process-local: each replica keeps its own breakers.
"""

from __future__ import annotations

from datetime import datetime
from typing import TypeVar

import msgspec
from litestar import get
from litestar.di import NamedDependency

from gateway.domain.generation import Operation, Sampler, Style
from gateway.routing.breaker import BreakerState
from gateway.routing.slots import EngineHealth, EngineStatus
from gateway.state import Services

_ADMIN = {"operator": True}


class BreakerView(msgspec.Struct, kw_only=True):
    """The engine's circuit breaker. `half_open`: the next attempt is a probe that decides."""

    state: BreakerState
    consecutive_failures: int
    error_rate: float  # failures over the recent outcome window, 0..1
    opened_at: datetime | None
    probe_after: datetime | None


class ConcurrencyView(msgspec.Struct, kw_only=True):
    """Attempts running on the engine now, against its `max_concurrency`."""

    in_use: int
    limit: int


class CapabilitiesView(msgspec.Struct, kw_only=True):
    """What the engine can serve; requests outside these ranges are routed elsewhere."""

    operations: list[Operation]
    min_side: int
    max_side: int
    side_multiple: int
    min_steps: int
    max_steps: int
    min_guidance: float
    max_guidance: float
    max_n: int
    samplers: list[Sampler] | None  # null: any sampler name is accepted
    styles: list[Style] | None  # null: styles are accepted
    # Per operation, the request fields passed on as asked; a request setting another one is
    # routed elsewhere. null: every field.
    honours: dict[Operation, list[str]] | None = None


class EngineView(msgspec.Struct, kw_only=True):
    """One configured engine as this replica sees it."""

    name: str
    object: str = "engine"
    kind: str
    status: EngineStatus
    # When the vendor last refused our credentials (401/403); null once the engine produced images again.
    credentials_refused_at: datetime | None = None
    weight: int
    breaker: BreakerView
    concurrency: ConcurrencyView
    capabilities: CapabilitiesView


class EngineList(msgspec.Struct, kw_only=True):
    """Every configured engine, in configuration order."""

    data: list[EngineView]


T = TypeVar("T", bound=str)


def _sorted(values: frozenset[T] | None) -> list[T] | None:
    return sorted(values) if values is not None else None


def engine_view(health: EngineHealth) -> EngineView:
    """The public shape of one engine's health."""
    caps = health.capabilities
    return EngineView(
        name=health.name,
        kind=health.kind,
        status=health.status,
        credentials_refused_at=health.credentials_refused_at,
        weight=health.weight,
        breaker=BreakerView(
            state=health.breaker,
            consecutive_failures=health.consecutive_failures,
            error_rate=health.error_rate,
            opened_at=health.opened_at,
            probe_after=health.probe_after,
        ),
        concurrency=ConcurrencyView(in_use=health.in_flight, limit=health.max_concurrency),
        capabilities=CapabilitiesView(
            operations=sorted(caps.operations),
            min_side=caps.min_side,
            max_side=caps.max_side,
            side_multiple=caps.side_multiple,
            min_steps=caps.min_steps,
            max_steps=caps.max_steps,
            min_guidance=caps.min_guidance,
            max_guidance=caps.max_guidance,
            max_n=caps.max_n,
            samplers=_sorted(caps.samplers),
            styles=_sorted(caps.styles),
            honours={op: sorted(fields) for op, fields in caps.honours.items()} if caps.honours is not None else None,
        ),
    )


@get(
    "/v1/admin/engines",
    operation_id="listEngines",
    summary="Engine health and breaker state",
    tags=["admin-engines"],
    opt=_ADMIN,
)
async def list_engines(*, services: NamedDependency[Services]) -> EngineList:
    """Each engine's kind, capabilities, health, circuit breaker and concurrency in use, as this
    replica's router sees them (breakers are per replica)."""
    return EngineList(data=[engine_view(health) for health in services.router.health()])


routes = [list_engines]
