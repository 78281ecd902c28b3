"""Router: engine choice, fallback, rejection, deadlines, limits and health."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec
import pytest

from gateway.config import EngineConfig, RoutingConfig
from gateway.domain.generation import EngineAttempt, EngineRequest, EngineResult, Operation
from gateway.engines.base import (
    Capabilities,
    Engine,
    EngineRateLimited,
    EngineRejected,
    EngineUnavailable,
    ProgressCallback,
)
from gateway.metrics import Metrics
from gateway.routing import AllEnginesFailed, NoEngineCanServe, RequestRejected, RoutedResult, Router
from tests.fakes.samples import sample_request
from tests.unit.routing.engines import OK, ScriptedEngine

FAST = RoutingConfig(backoff_base_s=0.001, backoff_max_s=0.002, breaker_consecutive_failures=3, breaker_open_s=30)


def make_router(
    *engines: ScriptedEngine,
    config: RoutingConfig = FAST,
    routes: Mapping[Operation, Sequence[str]] | None = None,
    configs: Mapping[str, EngineConfig] | None = None,
    metrics: Metrics | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Router:
    by_name: dict[str, Engine] = {e.name: e for e in engines}
    names = [e.name for e in engines]
    return Router(
        by_name,
        routes if routes is not None else {"text-to-image": names, "image-to-image": names, "inpaint": names},
        config,
        metrics or Metrics(),
        engine_configs=configs,
        clock=clock,
        rng=random.Random(7),
    )


class Recorder:
    def __init__(self) -> None:
        self.attempts: list[EngineAttempt] = []
        self.progress: list[float] = []

    async def on_attempt(self, attempt: EngineAttempt) -> None:
        self.attempts.append(attempt)


async def run(
    router: Router,
    n: int = 1,
    *,
    within: float = 5.0,
    recorder: Recorder | None = None,
    clock: Callable[[], float] = time.monotonic,
    **fields: Any,
) -> RoutedResult:
    rec = recorder or Recorder()
    # The deadline is on the router's clock: a router built with a fake clock needs it passed here.
    return await router.run(
        sample_request("text-to-image", n, **fields),
        deadline=clock() + within,
        on_attempt=rec.on_attempt,
        progress=rec.progress.append,
    )


async def test_falls_back_to_the_next_engine_after_a_retryable_failure() -> None:
    first, second = ScriptedEngine("a", EngineUnavailable("down")), ScriptedEngine("b")
    recorder = Recorder()
    routed = await run(make_router(first, second), recorder=recorder)
    assert routed.engine == "b"
    assert routed.kind == "diffusion"
    assert [(a.engine, a.outcome) for a in routed.attempts] == [("a", "failed"), ("b", "succeeded")]
    assert recorder.attempts == routed.attempts
    assert routed.attempts[0].error_class == "engine_failure"


async def test_rejection_stops_without_fallback() -> None:
    first, second = ScriptedEngine("a", EngineRejected("prompt refused")), ScriptedEngine("b")
    with pytest.raises(RequestRejected) as caught:
        await run(make_router(first, second))
    assert caught.value.message == "prompt refused"
    assert [a.outcome for a in caught.value.attempts] == ["rejected"]
    assert second.calls == 0


async def test_all_engines_down_raises_all_engines_failed_with_every_attempt() -> None:
    engines = [ScriptedEngine(name, EngineUnavailable("down")) for name in "abc"]
    with pytest.raises(AllEnginesFailed) as caught:
        await run(make_router(*engines, config=RoutingConfig(max_attempts=3, backoff_base_s=0.001)))
    assert [a.engine for a in caught.value.attempts] == ["a", "b", "c"]


async def test_max_attempts_bounds_retries_of_a_single_engine() -> None:
    engine = ScriptedEngine("a", EngineUnavailable("down"))
    with pytest.raises(AllEnginesFailed) as caught:
        await run(make_router(engine, config=RoutingConfig(max_attempts=3, backoff_base_s=0.001)))
    assert engine.calls == 3
    assert len(caught.value.attempts) == 3


async def test_zero_images_counts_as_a_failure_and_falls_back() -> None:
    routed = await run(make_router(ScriptedEngine("a", 0), ScriptedEngine("b")))
    assert [a.outcome for a in routed.attempts] == ["failed", "succeeded"]


async def test_fewer_images_than_asked_is_a_partial_success() -> None:
    routed = await run(make_router(ScriptedEngine("a", 1), ScriptedEngine("b")), n=3)
    assert routed.engine == "a"
    assert routed.attempts[0].outcome == "partial"
    assert routed.attempts[0].images == 1


async def test_unexpected_engine_exception_falls_back() -> None:
    class Broken(ScriptedEngine):
        async def generate(self, request: EngineRequest, progress: ProgressCallback) -> EngineResult:
            raise KeyError("bug")

    routed = await run(make_router(Broken("a"), ScriptedEngine("b")))
    assert routed.engine == "b"
    assert routed.attempts[0].error == "a: internal error (KeyError)"


async def test_candidates_skip_engines_that_cannot_serve_the_parameters() -> None:
    small = ScriptedEngine("small", capabilities=Capabilities(operations=frozenset({"text-to-image"}), max_side=256))
    big = ScriptedEngine("big")
    router = make_router(small, big)
    assert [e.name for e in router.candidates(sample_request("text-to-image"))] == ["big"]


async def test_no_engine_can_serve_names_the_constraint() -> None:
    small = ScriptedEngine("small", capabilities=Capabilities(operations=frozenset({"text-to-image"}), max_side=256))
    with pytest.raises(NoEngineCanServe) as caught:
        make_router(small).candidates(sample_request("text-to-image"))
    assert caught.value.reasons == {"small": "width must be between 64 and 256"}
    assert "small: width must be between 64 and 256" in str(caught.value)


async def test_operation_without_route_cannot_be_served() -> None:
    router = make_router(ScriptedEngine("a"), routes={"text-to-image": ["a"]})
    with pytest.raises(NoEngineCanServe, match="no engine is routed for inpaint"):
        router.check(sample_request("inpaint"))


async def test_allow_list_restricts_and_keeps_route_order() -> None:
    router = make_router(ScriptedEngine("a"), ScriptedEngine("b"), ScriptedEngine("c"))
    assert [e.name for e in router.candidates(sample_request(), allow=["c", "b"])] == ["b", "c"]
    with pytest.raises(NoEngineCanServe, match="not in the request's engines list"):
        router.candidates(sample_request(), allow=["zzz"])


async def test_engine_options_pin_to_engines_of_that_kind_and_are_validated() -> None:
    vendor = ScriptedEngine("q", kind="qolaba", options=frozenset({"app_id"}))
    router = make_router(ScriptedEngine("local"), vendor)
    pinned = sample_request(engine_options={"qolaba": {"app_id": "ap-x"}})
    assert [e.name for e in router.candidates(pinned)] == ["q"]
    with pytest.raises(NoEngineCanServe, match=r"engine_options\.qolaba\.colour is unknown"):
        router.candidates(sample_request(engine_options={"qolaba": {"colour": "red"}}))


async def test_url_only_engine_is_skipped_when_the_mask_has_no_url() -> None:
    caps = Capabilities(operations=frozenset({"inpaint"}), needs_input_url=True)
    router = make_router(ScriptedEngine("q", capabilities=caps), ScriptedEngine("local"))
    request = msgspec.structs.replace(sample_request("inpaint"), mask=sample_request("inpaint", urls=False).mask)
    assert [e.name for e in router.candidates(request)] == ["local"]


async def test_weights_order_engines_at_random_in_proportion() -> None:
    configs = {"light": EngineConfig(kind="diffusion", weight=1), "heavy": EngineConfig(kind="diffusion", weight=9)}
    router = make_router(ScriptedEngine("light"), ScriptedEngine("heavy"), configs=configs)
    firsts = [router.candidates(sample_request())[0].name for _ in range(400)]
    assert 0.8 < firsts.count("heavy") / 400 < 0.97


async def test_equal_weights_keep_the_configured_order() -> None:
    router = make_router(ScriptedEngine("b"), ScriptedEngine("a"))
    assert all([e.name for e in router.candidates(sample_request())] == ["b", "a"] for _ in range(20))


async def test_retry_after_is_honoured_when_it_fits_the_deadline() -> None:
    engine = ScriptedEngine("a", EngineRateLimited("slow down", retry_after=0.1), OK)
    started = time.monotonic()
    routed = await run(make_router(engine))
    assert time.monotonic() - started >= 0.1
    assert [a.outcome for a in routed.attempts] == ["rate_limited", "succeeded"]


async def test_retry_after_beyond_the_deadline_is_not_waited_for() -> None:
    engine = ScriptedEngine("a", EngineRateLimited("slow down", retry_after=60), OK)
    started = time.monotonic()
    with pytest.raises(AllEnginesFailed) as caught:
        await run(make_router(engine), within=1.0)
    assert time.monotonic() - started < 0.5
    assert [a.outcome for a in caught.value.attempts] == ["rate_limited"]


async def test_deadline_cuts_a_slow_engine_without_counting_against_its_breaker() -> None:
    engine = ScriptedEngine("a", 5.0)
    router = make_router(engine)
    with pytest.raises(AllEnginesFailed) as caught:
        await run(router, within=0.1)
    assert [a.outcome for a in caught.value.attempts] == ["timeout"]
    assert router.health()[0].consecutive_failures == 0


async def test_concurrency_limit_caps_attempts_in_flight() -> None:
    engine = ScriptedEngine("a", 0.05)
    router = make_router(engine, configs={"a": EngineConfig(kind="diffusion", max_concurrency=2)})
    results = await asyncio.gather(*(run(router) for _ in range(6)))
    assert all(r.engine == "a" for r in results)
    assert engine.max_in_flight == 2
    assert router.health()[0].in_flight == 0


async def test_progress_never_goes_backwards_across_fallbacks() -> None:
    recorder = Recorder()
    await run(make_router(ScriptedEngine("a", EngineUnavailable("down")), ScriptedEngine("b")), recorder=recorder)
    assert recorder.progress == [0.5]


async def test_attempts_are_recorded_in_metrics() -> None:
    metrics = Metrics()
    await run(make_router(ScriptedEngine("a", EngineUnavailable("down")), ScriptedEngine("b"), metrics=metrics))
    rendered = metrics.render().decode()
    assert 'gateway_engine_attempts_total{engine="a",outcome="failed"} 1.0' in rendered
    assert 'gateway_engine_attempts_total{engine="b",outcome="succeeded"} 1.0' in rendered
    assert 'gateway_engine_attempt_seconds_count{engine="b",outcome="succeeded"} 1.0' in rendered


async def test_health_reports_each_engine_and_aclose_closes_them() -> None:
    engines = [ScriptedEngine("a"), ScriptedEngine("b")]
    router = make_router(*engines)
    health = router.health()
    assert [(h.name, h.breaker, h.in_flight) for h in health] == [("a", "closed", 0), ("b", "closed", 0)]
    await router.aclose()
    assert all(e.closed for e in engines)


class Dropping(ScriptedEngine):
    """An engine that never passes `negative_prompt` on."""

    def received(self, request: EngineRequest) -> dict[str, Any]:
        sent = super().received(request)
        sent.pop("negative_prompt", None)
        return sent


async def test_an_engine_that_would_drop_a_field_the_tenant_set_is_skipped() -> None:
    dropping, keeping = Dropping("dropping"), ScriptedEngine("keeping")
    router = make_router(dropping, keeping)
    asked = sample_request(explicit=frozenset({"negative_prompt"}))
    recorder = Recorder()
    routed = await router.run(
        asked, deadline=time.monotonic() + 5, on_attempt=recorder.on_attempt, progress=recorder.progress.append
    )
    assert routed.engine == "keeping"
    assert dropping.calls == 0
    assert [a.engine for a in routed.attempts] == ["keeping"]
    received = routed.attempts[0].received
    assert received is not None
    assert received["negative_prompt"] == "blurry"
    # Not asked for (left at its default): the dropping engine may serve it.
    assert router.candidates(sample_request())[0].name == "dropping"


async def test_no_engine_honouring_a_set_field_names_the_field() -> None:
    router = make_router(Dropping("dropping"))
    with pytest.raises(NoEngineCanServe) as caught:
        router.check(sample_request(explicit=frozenset({"negative_prompt"})))
    assert set(caught.value.fields) == {"negative_prompt"}
    assert "dropping" in caught.value.fields["negative_prompt"]


class Unreadable(ScriptedEngine):
    """An engine whose `received` has a bug."""

    def received(self, request: EngineRequest) -> dict[str, Any]:
        raise KeyError("sampler")


async def test_an_engine_that_cannot_say_what_it_sends_is_passed_over_not_fatal() -> None:
    router = make_router(Unreadable("unreadable"), ScriptedEngine("fine"))
    asked = sample_request(explicit=frozenset({"seed"}))
    recorder = Recorder()
    routed = await router.run(
        asked, deadline=time.monotonic() + 5, on_attempt=recorder.on_attempt, progress=recorder.progress.append
    )
    assert routed.engine == "fine"
    # Not asked for anything: it serves, and its attempt is recorded without what it sent.
    routed = await run(make_router(Unreadable("unreadable")))
    assert routed.attempts[0].received is None
