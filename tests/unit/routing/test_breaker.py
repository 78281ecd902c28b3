"""Circuit breakers, through the router: open, skip, half-open probe, recovery."""

from __future__ import annotations

import pytest

from gateway.config import RoutingConfig
from gateway.engines.base import EngineCredentialsRefused, EngineRejected, EngineUnavailable
from gateway.routing import AllEnginesFailed, CircuitBreaker
from tests.fakes.samples import sample_request
from tests.unit.routing.engines import OK, ScriptedEngine
from tests.unit.routing.test_router import FAST, make_router, run


def state_of(breaker: CircuitBreaker) -> str:
    return breaker.state  # read through a call so the type checker does not narrow it between asserts


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures() -> None:
    clock = Clock()
    breaker = CircuitBreaker(RoutingConfig(breaker_consecutive_failures=3), clock)
    for _ in range(2):
        breaker.record_failure()
    assert state_of(breaker) == "closed"
    breaker.record_failure()
    assert state_of(breaker) == "open"
    assert not breaker.acquire()


def test_breaker_opens_on_error_rate_over_a_full_window() -> None:
    breaker = CircuitBreaker(
        RoutingConfig(breaker_consecutive_failures=100, breaker_window=4, breaker_error_rate=0.5), Clock()
    )
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    breaker.record_success()
    assert state_of(breaker) == "closed"  # rate 0.5, but a verdict is taken on failures only
    breaker.record_failure()  # window S F S F: half failed, never two in a row
    assert breaker.error_rate == 0.5
    assert breaker.consecutive_failures == 1
    assert state_of(breaker) == "open"


def test_half_open_lets_exactly_one_probe_through() -> None:
    clock = Clock()
    breaker = CircuitBreaker(RoutingConfig(breaker_consecutive_failures=1, breaker_open_s=10), clock)
    breaker.record_failure()
    clock.now += 10
    assert state_of(breaker) == "half_open"
    assert breaker.acquire()
    assert not breaker.acquire()
    breaker.record_success()
    assert state_of(breaker) == "closed"
    assert breaker.consecutive_failures == 0


def test_failed_probe_opens_the_breaker_again() -> None:
    clock = Clock()
    breaker = CircuitBreaker(RoutingConfig(breaker_consecutive_failures=1, breaker_open_s=10), clock)
    breaker.record_failure()
    clock.now += 10
    assert breaker.acquire()
    breaker.record_failure()
    assert state_of(breaker) == "open"
    clock.now += 9
    assert state_of(breaker) == "open"


async def test_open_breaker_is_skipped_and_recovers_after_a_successful_probe() -> None:
    clock = Clock()
    flaky = ScriptedEngine("flaky", EngineUnavailable("down"), EngineUnavailable("down"), EngineUnavailable("down"), OK)
    backup = ScriptedEngine("backup")
    router = make_router(flaky, backup, clock=clock)
    for _ in range(3):
        assert (await run(router, clock=clock)).engine == "backup"
    assert router.health()[0].breaker == "open"
    routed = await run(router, clock=clock)
    assert [(a.engine, a.outcome) for a in routed.attempts] == [("flaky", "skipped"), ("backup", "succeeded")]
    assert [e.name for e in router.candidates(sample_request())] == ["backup"]
    clock.now += FAST.breaker_open_s
    assert router.health()[0].breaker == "half_open"
    routed = await run(router, clock=clock)
    assert routed.engine == "flaky"
    assert router.health()[0].breaker == "closed"


async def test_all_breakers_open_fails_fast_without_calling_engines() -> None:
    clock = Clock()
    engine = ScriptedEngine("a", EngineUnavailable("down"))
    router = make_router(engine, clock=clock)
    for _ in range(3):
        with pytest.raises(AllEnginesFailed):
            await router.run(sample_request(), deadline=clock.now + 5, on_attempt=_ignore, progress=_nothing)
    calls = engine.calls
    with pytest.raises(AllEnginesFailed):
        router.candidates(sample_request())
    with pytest.raises(AllEnginesFailed) as caught:
        await router.run(sample_request(), deadline=clock.now + 5, on_attempt=_ignore, progress=_nothing)
    assert engine.calls == calls
    assert [a.outcome for a in caught.value.attempts] == ["skipped"]
    router.check(sample_request())  # submission-time validation ignores breakers


async def test_rejections_do_not_count_as_breaker_failures() -> None:
    engine = ScriptedEngine("a", EngineRejected("bad prompt"))
    router = make_router(engine)
    for _ in range(5):
        with pytest.raises(Exception, match="bad prompt"):
            await run(router)
    assert router.health()[0].breaker == "closed"
    assert router.health()[0].consecutive_failures == 0


async def _ignore(attempt: object) -> None:
    del attempt


def _nothing(fraction: float) -> None:
    del fraction


def test_trip_opens_at_once_and_a_later_probe_can_close_it() -> None:
    clock = Clock()
    breaker = CircuitBreaker(RoutingConfig(breaker_consecutive_failures=5, breaker_open_s=10), clock)
    breaker.trip()
    assert state_of(breaker) == "open"
    assert not breaker.acquire()
    clock.now += 10
    assert breaker.acquire()  # the half-open probe
    breaker.record_success()
    assert state_of(breaker) == "closed"


async def test_credentials_refused_opens_the_breaker_at_once_and_marks_the_engine() -> None:
    refusing = ScriptedEngine("refusing", EngineCredentialsRefused("refusing: vendor refused our credentials"))
    router = make_router(refusing, ScriptedEngine("spare"))
    routed = await run(router)
    assert routed.engine == "spare"
    (health,) = [h for h in router.health() if h.name == "refusing"]
    assert (health.status, health.breaker) == ("credentials_refused", "open")
    assert health.credentials_refused_at is not None
    assert routed.attempts[0].error_class == "credentials_refused"
