"""The router's state per engine (breaker, concurrency slots, load) and how it reads to operators.

Kept apart from the router's choosing and fallback logic: this is what `/v1/admin/engines`
and the Prometheus gauges show, and it changes for different reasons.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import msgspec

from gateway.engines.base import Capabilities, Engine
from gateway.metrics import Metrics
from gateway.routing.breaker import BreakerState, CircuitBreaker

EngineStatus = Literal["healthy", "degraded", "recovering", "down", "credentials_refused"]


class EngineHealth(msgspec.Struct, frozen=True, kw_only=True):
    """One engine's state for /v1/admin/engines.

    `status` sums it up: `credentials_refused` from the vendor's 401/403 until the engine next
    produces images (`credentials_refused_at` says when), `down` while the breaker is open,
    `recovering` once it is half-open (the next attempt is a probe), `degraded` while closed with
    recent failures, else `healthy`.
    """

    name: str
    kind: str
    status: EngineStatus
    breaker: BreakerState
    consecutive_failures: int
    error_rate: float
    opened_at: datetime | None  # when the breaker last opened; null while closed
    probe_after: datetime | None  # when an open breaker lets a half-open probe through
    in_flight: int
    max_concurrency: int
    weight: int
    capabilities: Capabilities
    credentials_refused_at: datetime | None = None


@dataclass
class EngineSlot:
    """Router-side state of one engine: its breaker, its concurrency limit, its load."""

    engine: Engine
    breaker: CircuitBreaker
    semaphore: asyncio.Semaphore
    max_concurrency: int
    weight: int
    in_flight: int = 0
    credentials_refused_at: datetime | None = None  # the vendor's last 401/403, until a success

    def export_gauges(self, metrics: Metrics) -> None:
        """Let the breaker gauge read the breaker when scraped: open -> half-open is a matter of
        time, with no event in the router that could update a stored value."""
        metrics.engine_breaker_open.labels(self.engine.name).set_function(
            lambda: 0.0 if self.breaker.state == "closed" else 1.0
        )
        metrics.engine_in_flight.labels(self.engine.name).set_function(lambda: float(self.in_flight))

    def health(self, clock: Callable[[], float], open_s: float) -> EngineHealth:
        """This engine's state now; `clock` is the breaker's, `open_s` its cool-down."""
        breaker = self.breaker
        opened = breaker.opened_at
        opened_at = probe_after = None
        if opened is not None:
            # The breaker runs on a monotonic clock; operators want wall-clock times.
            opened_at = datetime.now(UTC) - timedelta(seconds=clock() - opened)
            probe_after = opened_at + timedelta(seconds=open_s)
        return EngineHealth(
            name=self.engine.name,
            kind=self.engine.kind,
            status="credentials_refused" if self.credentials_refused_at is not None else _status(breaker),
            breaker=breaker.state,
            consecutive_failures=breaker.consecutive_failures,
            error_rate=round(breaker.error_rate, 4),
            opened_at=opened_at,
            probe_after=probe_after,
            in_flight=self.in_flight,
            max_concurrency=self.max_concurrency,
            weight=self.weight,
            capabilities=self.engine.capabilities,
            credentials_refused_at=self.credentials_refused_at,
        )


def _status(breaker: CircuitBreaker) -> EngineStatus:
    state = breaker.state
    if state == "open":
        return "down"
    if state == "half_open":
        return "recovering"
    return "degraded" if breaker.consecutive_failures else "healthy"
