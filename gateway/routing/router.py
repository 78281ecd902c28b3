"""Engine choice and fallback: which engines may serve a request, in what order, and what to do
when one fails.

A retryable failure (timeout, 5xx, 429, connection, malformed answer, zero images) moves on to
the next engine, with a jittered backoff and within the caller's deadline; a rejection (the
request itself is bad) stops at once. Each engine has a circuit breaker and a concurrency limit.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from gateway.backoff import equal_jitter, exponential_step
from gateway.config import ConfigError, EngineConfig, RoutingConfig, Settings
from gateway.domain.generation import AttemptOutcome, EngineAttempt, EngineRequest, EngineResult, Operation
from gateway.engines.base import (
    INPUT_URL_MISSING,
    Engine,
    EngineCredentialsRefused,
    EngineError,
    EngineRateLimited,
    EngineRejected,
    EngineTimeout,
    EngineUnavailable,
    ProgressCallback,
    dropped_fields,
)
from gateway.metrics import Metrics
from gateway.observability.context import bind
from gateway.observability.tracing import Attributes, fail_span, span, trace_ids
from gateway.routing.breaker import CircuitBreaker
from gateway.routing.errors import AllEnginesFailed, NoEngineCanServe, RequestRejected
from gateway.routing.slots import EngineHealth, EngineSlot

log = logging.getLogger(__name__)

OnAttempt = Callable[[EngineAttempt], Awaitable[None]]


class RoutedResult(msgspec.Struct, frozen=True, kw_only=True):
    """The result of a routed request: which engine produced it, and every attempt on the way."""

    engine: str
    kind: str
    result: EngineResult
    attempts: list[EngineAttempt]
    lost_vendor_credits: float = 0.0  # what failed attempts before the success reported spending


@dataclass
class _Outcome:
    attempt: EngineAttempt
    result: EngineResult | None = None
    error: EngineError | None = None


class Router:
    """Routes `EngineRequest`s over the configured engines. One per app; lives on one event loop."""

    def __init__(
        self,
        engines: Mapping[str, Engine],
        routes: Mapping[Operation, Sequence[str]],
        config: RoutingConfig,
        metrics: Metrics,
        *,
        engine_configs: Mapping[str, EngineConfig] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        for operation, names in routes.items():
            for name in names:
                if name not in engines:
                    raise ConfigError(f"routes.{operation}: unknown engine {name!r}")
        self._config = config
        self._metrics = metrics
        self._clock = clock
        self._rng = rng or random.Random()
        self._routes = {op: list(names) for op, names in routes.items()}
        self._slots: dict[str, EngineSlot] = {}
        for name, engine in engines.items():
            cfg = (engine_configs or {}).get(name)
            limit = cfg.max_concurrency if cfg is not None else 16
            slot = EngineSlot(
                engine=engine,
                breaker=CircuitBreaker(config, clock),
                semaphore=asyncio.Semaphore(limit),
                max_concurrency=limit,
                weight=cfg.weight if cfg is not None else 1,
            )
            slot.export_gauges(metrics)
            self._slots[name] = slot

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        engines: Mapping[str, Engine],
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> Router:
        """A router over `engines` with the routes, limits and weights of `settings`."""
        return cls(
            engines, settings.routes, settings.routing, metrics, engine_configs=settings.engines, clock=clock, rng=rng
        )

    # -- choosing ---------------------------------------------------------------------------

    def _servable(self, request: EngineRequest, allow: Sequence[str] | None) -> tuple[list[EngineSlot], dict[str, str]]:
        names = self._routes.get(request.operation, [])
        if not names:
            raise NoEngineCanServe({"routes": f"no engine is routed for {request.operation}"})
        # engine_options keyed by a kind pin the request to engines of that kind: its options
        # mean nothing to the others.
        pinned = set(request.engine_options)
        servable: list[EngineSlot] = []
        reasons: dict[str, str] = {}
        dropped: dict[str, list[str]] = {}  # field -> what each engine excluded for it would do
        for name in names:
            slot = self._slots[name]
            engine = slot.engine
            if allow is not None and name not in allow:
                reasons[name] = "not in the request's engines list"
                continue
            if pinned and engine.kind not in pinned:
                reasons[name] = f"engine_options name only {', '.join(sorted(pinned))} engines"
                continue
            why = engine.capabilities.check(request) or _mask_url_missing(engine, request)
            if why is None and engine.kind in request.engine_options:
                why = engine.check_options(request.engine_options[engine.kind], request.operation)
            if why is None and request.explicit:
                # An image made without what the tenant asked for is not the image they pay for.
                received = _received(engine, request)
                if received is None:
                    reasons[name] = "cannot tell what this engine would send"
                    continue
                changes = dropped_fields(request, received)
                for field, change in changes.items():
                    dropped.setdefault(field, []).append(f"{name}: {change}")
                why = "; ".join(changes.values()) or None
            if why is not None:
                reasons[name] = why
                continue
            servable.append(slot)
        if not servable and dropped:
            raise NoEngineCanServe(reasons, fields={f: "; ".join(c) for f, c in dropped.items()})
        return servable, reasons

    def check(self, request: EngineRequest, allow: Sequence[str] | None = None) -> None:
        """Raise `NoEngineCanServe` unless some routed engine can serve `request` (breakers ignored).

        For validation at submission: a momentarily open breaker must not turn a valid
        request into a 422.
        """
        servable, reasons = self._servable(request, allow)
        if not servable:
            raise NoEngineCanServe(reasons)

    def _ordered(self, slots: list[EngineSlot]) -> list[EngineSlot]:
        if len({slot.weight for slot in slots}) <= 1:
            return slots  # equal weights: the configured order is the fallback order
        # Weighted random order (Efraimidis-Spirakis): an engine of weight w comes first w times
        # as often as one of weight 1, and the rest still follow as fallbacks.
        return sorted(slots, key=lambda slot: self._rng.random() ** (1.0 / slot.weight), reverse=True)

    def candidates(self, request: EngineRequest, allow: Sequence[str] | None = None) -> list[Engine]:
        """The engines to try for `request`, in order.

        Raises `NoEngineCanServe` when no routed engine can serve the parameters, and
        `AllEnginesFailed` (no attempts) when the ones that could all have an open breaker.
        """
        servable, reasons = self._servable(request, allow)
        if not servable:
            raise NoEngineCanServe(reasons)
        available = [slot for slot in servable if slot.breaker.would_allow()]
        if not available:
            raise AllEnginesFailed([])
        return [slot.engine for slot in self._ordered(available)]

    # -- running ----------------------------------------------------------------------------

    async def run(
        self,
        request: EngineRequest,
        *,
        deadline: float,
        allow: Sequence[str] | None = None,
        on_attempt: OnAttempt,
        progress: ProgressCallback,
    ) -> RoutedResult:
        """Produce `request`'s images on the first engine that can, falling back on failures.

        `deadline` is on the router's clock (time.monotonic by default). Raises
        `NoEngineCanServe`, `RequestRejected` (no fallback) or `AllEnginesFailed`.
        """
        servable, reasons = self._servable(request, allow)
        if not servable:
            raise NoEngineCanServe(reasons)
        queue = deque(self._ordered(servable))
        attempts: list[EngineAttempt] = []
        tried: set[str] = set()
        not_before: dict[str, float] = {}  # Retry-After of engines that rate-limited this run
        lost = 0.0
        report = _monotonic(progress)

        async def record(attempt: EngineAttempt) -> None:
            attempts.append(attempt)
            await on_attempt(attempt)

        made = 0
        while queue and made < self._config.max_attempts:
            slot = queue.popleft()
            name = slot.engine.name
            now = self._clock()
            wait = self._backoff(made) if made else 0.0
            wait = max(wait, not_before.get(name, now) - now)
            if now + wait >= deadline:
                if name not in tried:
                    await record(_skipped(name, "the deadline leaves no time for this engine"))
                continue
            if wait > 0:
                await asyncio.sleep(wait)
            if not slot.breaker.acquire():
                if name not in tried:
                    await record(_skipped(name, "circuit breaker open"))
                continue
            tried.add(name)
            made += 1
            outcome = await self._traced_attempt(slot, request, deadline, report, retry=made - 1)
            await record(outcome.attempt)
            if outcome.result is not None:
                return RoutedResult(
                    engine=name,
                    kind=slot.engine.kind,
                    result=outcome.result,
                    attempts=attempts,
                    lost_vendor_credits=lost,
                )
            error = outcome.error
            assert error is not None
            lost += error.spend_vendor_credits
            if not error.retryable:
                raise RequestRejected(attempts, error.message, lost_vendor_credits=lost)
            if isinstance(error, EngineRateLimited) and error.retry_after is not None:
                not_before[name] = self._clock() + error.retry_after
            queue.append(slot)  # another round may retry it, attempts and deadline permitting
        raise AllEnginesFailed(attempts, lost_vendor_credits=lost)

    def _backoff(self, failures: int) -> float:
        # Doubling from the base; jittered so that fallbacks of many requests do not retry in step.
        step = exponential_step(self._config.backoff_base_s, 2.0, failures - 1, self._config.backoff_max_s)
        return equal_jitter(step, self._rng.random())

    async def _traced_attempt(
        self, slot: EngineSlot, request: EngineRequest, deadline: float, progress: ProgressCallback, *, retry: int
    ) -> _Outcome:
        """`_attempt` in a span of its own (engine, retry number, outcome), its log lines naming the engine."""
        engine = slot.engine
        attributes: Attributes = {
            "gateway.engine.name": engine.name,
            "gateway.engine.kind": engine.kind,
            "gateway.retry": retry,
        }
        with bind(engine=engine.name), span("engine.attempt", attributes) as current:
            outcome = await self._attempt(slot, request, deadline, progress)
            attempt = outcome.attempt
            current.set_attribute("gateway.engine.outcome", attempt.outcome)
            if outcome.error is not None:
                current.set_attribute("error.type", attempt.error_class or type(outcome.error).__name__)
                fail_span(current, attempt.error or attempt.outcome)
            else:
                current.set_attribute("gateway.images", attempt.images)
            return outcome

    async def _attempt(
        self, slot: EngineSlot, request: EngineRequest, deadline: float, progress: ProgressCallback
    ) -> _Outcome:
        name = slot.engine.name
        started = self._clock()
        generating = False
        error: EngineError
        budget = asyncio.timeout(max(0.0, deadline - started))
        try:
            async with budget, slot.semaphore:
                generating = True
                slot.in_flight += 1
                try:
                    result = await slot.engine.generate(request, progress)
                finally:
                    slot.in_flight -= 1
        except EngineError as exc:
            error = exc
        except TimeoutError as exc:
            if not budget.expired():
                log.exception("engine %s raised an unexpected error", name)
                error = EngineUnavailable(f"{name}: internal error ({type(exc).__name__})")
            else:
                # Our deadline, not the engine's own budget, cut the attempt: no verdict on the engine.
                slot.breaker.release()
                what = "the deadline passed during generation" if generating else "no free slot before the deadline"
                return self._finish(slot, request, started, "timeout", error=EngineTimeout(f"{name}: {what}"))
        except Exception as exc:
            # An engine bug must not sink the job while other engines could serve it.
            log.exception("engine %s raised an unexpected error", name)
            error = EngineUnavailable(f"{name}: internal error ({type(exc).__name__})")
        except BaseException:
            slot.breaker.release()  # cancelled: free the probe slot for the next caller
            raise
        else:
            if result.images:
                slot.breaker.record_success()
                slot.credentials_refused_at = None
                outcome: AttemptOutcome = "succeeded" if len(result.images) >= request.n else "partial"
                return self._finish(slot, request, started, outcome, result=result)
            error = EngineUnavailable(f"{name}: the engine returned no images")
        if isinstance(error, EngineCredentialsRefused):
            # No retry mends this: stop sending until the operator fixes the key (or a later probe passes).
            slot.breaker.trip()
            slot.credentials_refused_at = datetime.now(UTC)
            log.error("engine %s: the vendor refused our credentials: %s", name, error.message)
        elif error.retryable:
            slot.breaker.record_failure()
        else:
            slot.breaker.release()
        return self._finish(slot, request, started, _outcome_of(error), error=error)

    def _finish(
        self,
        slot: EngineSlot,
        request: EngineRequest,
        started: float,
        outcome: AttemptOutcome,
        *,
        result: EngineResult | None = None,
        error: EngineError | None = None,
    ) -> _Outcome:
        name = slot.engine.name
        elapsed = max(0.0, self._clock() - started)
        self._metrics.engine_attempts.labels(name, outcome).inc()
        # With tracing on, the histogram keeps this attempt's trace id as an exemplar (OpenMetrics output).
        ids = trace_ids()
        exemplar = {"trace_id": ids[0]} if ids is not None else None
        self._metrics.engine_latency.labels(name, outcome).observe(elapsed, exemplar)
        attempt = EngineAttempt(
            engine=name,
            outcome=outcome,
            latency_ms=round(elapsed * 1000),
            error_class=error.error_class if error is not None else None,
            error=error.message if error is not None else None,
            images=len(result.images) if result is not None else 0,
            received=_received(slot.engine, request),
        )
        if error is not None:
            log.info("engine %s attempt %s: %s", name, outcome, error.message)
        return _Outcome(attempt, result, error)

    # -- operating --------------------------------------------------------------------------

    def health(self) -> list[EngineHealth]:
        """Every engine's breaker, load and capabilities, in configuration order."""
        return [slot.health(self._clock, self._config.breaker_open_s) for slot in self._slots.values()]

    async def aclose(self) -> None:
        """Close every engine (and so its HTTP client); one failing to close does not stop the rest."""
        results = await asyncio.gather(*(slot.engine.aclose() for slot in self._slots.values()), return_exceptions=True)
        for name, outcome in zip(self._slots, results, strict=True):
            if isinstance(outcome, Exception):
                log.warning("engine %s did not close cleanly: %s", name, type(outcome).__name__)


def _received(engine: Engine, request: EngineRequest) -> dict[str, Any] | None:
    # An engine bug here must not sink the request while other engines could serve it.
    try:
        return engine.received(request)
    except Exception:
        log.exception("engine %s could not say what it sends", engine.name)
        return None


def _mask_url_missing(engine: Engine, request: EngineRequest) -> str | None:
    # Capabilities.check covers the init image only; URL-only vendors need the mask's URL too.
    if engine.capabilities.needs_input_url and request.mask is not None and request.mask.url is None:
        return INPUT_URL_MISSING.format(what="the mask")
    return None


def _outcome_of(error: EngineError) -> AttemptOutcome:
    if isinstance(error, EngineRejected) or not error.retryable:
        return "rejected"
    if isinstance(error, EngineRateLimited):
        return "rate_limited"
    if isinstance(error, EngineTimeout):
        return "timeout"
    return "failed"


def _skipped(name: str, why: str) -> EngineAttempt:
    return EngineAttempt(engine=name, outcome="skipped", latency_ms=0, error_class="skipped", error=why)


def _monotonic(progress: ProgressCallback) -> ProgressCallback:
    # A fallback engine starts from zero again; the client should not see progress go backwards.
    best = 0.0

    def report(fraction: float) -> None:
        nonlocal best
        if fraction > best:
            best = fraction
            progress(fraction)

    return report
