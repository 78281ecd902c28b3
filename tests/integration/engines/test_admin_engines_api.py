"""/v1/admin/engines and the per-engine Prometheus metrics, through the app."""

from __future__ import annotations

from typing import Any

from tests.conftest import Gateway
from tests.e2e.test_generation_billing import T2I, auth
from tests.waiting import eventually


async def engine_states(gw: Gateway) -> dict[str, dict[str, Any]]:
    response = await gw.client.get("/v1/admin/engines", headers=auth(gw.operator_key))
    assert response.status_code == 200, response.text
    return {engine["name"]: engine for engine in response.json()["data"]}


async def test_engines_are_listed_in_configuration_order_with_capabilities_and_limits(gateway: Gateway) -> None:
    response = await gateway.client.get("/v1/admin/engines", headers=auth(gateway.operator_key))
    assert response.status_code == 200
    data = response.json()["data"]
    kinds = [(e["name"], e["kind"]) for e in data]
    assert kinds == [("a2c", "api2convert"), ("qolaba", "qolaba"), ("ait", "aithriving")]
    qolaba = data[1]
    assert qolaba["status"] == "healthy"
    assert qolaba["breaker"] == {
        "state": "closed",
        "consecutive_failures": 0,
        "error_rate": 0.0,
        "opened_at": None,
        "probe_after": None,
    }
    assert qolaba["concurrency"] == {"in_use": 0, "limit": 16}
    caps = qolaba["capabilities"]
    # Qolaba's documented ranges, stricter than ours.
    assert (caps["min_side"], caps["max_side"], caps["side_multiple"], caps["max_n"]) == (512, 1536, 64, 4)
    assert (caps["min_guidance"], caps["max_guidance"]) == (2.0, 25.0)
    assert caps["operations"] == sorted(caps["operations"])
    # What it passes on per operation: never steps or seed; for inpaint no size or guidance either.
    assert caps["honours"]["inpaint"] == ["model", "negative_prompt"]
    assert "steps" not in caps["honours"]["text-to-image"]


async def test_tenant_keys_cannot_see_engines(gateway: Gateway) -> None:
    _, key = await gateway.tenant()
    assert (await gateway.client.get("/v1/admin/engines", headers=auth(key))).status_code == 403
    assert (await gateway.client.get("/v1/admin/engines")).status_code == 401


async def test_failures_show_as_degraded_with_the_error_rate(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    gateway.extra["a2c"].fail_with_status(500)
    job = (await gateway.client.post("/v1/text-to-image", json=T2I, headers=auth(key))).json()
    assert job["engine"] == "qolaba"
    states = await engine_states(gateway)
    assert states["a2c"]["status"] == "degraded"
    assert states["a2c"]["breaker"]["consecutive_failures"] == 1
    assert states["a2c"]["breaker"]["error_rate"] == 1.0
    assert states["qolaba"]["status"] == "healthy"


async def test_concurrency_in_use_counts_running_attempts(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    gateway.extra["a2c"].slow_job(polls=60)
    queued = await gateway.client.post("/v1/text-to-image", json={**T2I, "async": True}, headers=auth(key))
    assert queued.status_code == 202

    async def in_use() -> bool:
        return bool((await engine_states(gateway))["a2c"]["concurrency"]["in_use"] == 1)

    async def succeeded() -> bool:
        job = (await gateway.client.get(queued.headers["location"], headers=auth(key))).json()
        return bool(job["state"] == "succeeded")

    await eventually(in_use, what="a2c's one attempt counted in use")
    await eventually(succeeded, what="the job succeeded")
    assert (await engine_states(gateway))["a2c"]["concurrency"]["in_use"] == 0


async def test_metrics_export_latency_and_outcomes_per_engine(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    gateway.extra["a2c"].fail_with_status(503)
    await gateway.client.post("/v1/text-to-image", json=T2I, headers=auth(key))
    text = (await gateway.client.get("/metrics")).text
    assert 'gateway_engine_attempts_total{engine="a2c",outcome="failed"} 1.0' in text
    assert 'gateway_engine_attempts_total{engine="qolaba",outcome="succeeded"} 1.0' in text
    assert 'gateway_engine_attempt_seconds_count{engine="qolaba",outcome="succeeded"} 1.0' in text
    assert 'gateway_engine_attempt_seconds_bucket{engine="a2c",le="+Inf",outcome="failed"} 1.0' in text
    assert 'gateway_engine_breaker_open{engine="a2c"} 0.0' in text
    assert 'gateway_engine_in_flight{engine="ait"} 0.0' in text
