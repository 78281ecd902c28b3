"""The fallback matrix through the whole gateway: one engine's trouble is not the tenant's.

Routes (tests/conftest.py): text-to-image [a2c, qolaba], image-to-image [ait], inpaint [a2c].
Each case checks what the tenant sees, what it paid, what the job recorded, and that the
ledger audit stays clean.
"""

from __future__ import annotations

import base64
import logging
import time
from datetime import datetime
from typing import Any
from uuid import UUID

import pytest

from tests.conftest import Gateway
from tests.e2e.test_generation_billing import T2I, audit_clean, auth
from tests.fakes.base import FakeVendor, Faults
from tests.fakes.images import png
from tests.waiting import eventually

IMAGE = base64.b64encode(png(512, 512)).decode()

UNIT_PRICE = 0.4  # credits per 512x512 image at 30 steps in the default price book


async def balance(gw: Gateway, key: str) -> float:
    response = await gw.client.get("/v1/balance", headers=auth(key))
    assert response.status_code == 200
    value: float = response.json()["balance"]
    return value


async def charges(gw: Gateway, job_id: str) -> list[int]:
    async with gw.pool.acquire() as conn:
        rows = await conn.fetch("SELECT amount FROM ledger_entries WHERE job_id = $1 AND kind = 'charge'", UUID(job_id))
    return [row["amount"] for row in rows]


async def engines(gw: Gateway) -> dict[str, dict[str, Any]]:
    response = await gw.client.get("/v1/admin/engines", headers=auth(gw.operator_key))
    assert response.status_code == 200, response.text
    return {engine["name"]: engine for engine in response.json()["data"]}


async def half_open(gw: Gateway, engine: str) -> bool:
    """Whether the engine's breaker lets a probe through: its cool-down (on the real clock) is over."""
    return bool((await engines(gw))[engine]["breaker"]["state"] == "half_open")


def submits(fake: FakeVendor) -> int:
    """Job submissions the fake received (polls and downloads are not new work)."""
    return sum(1 for call in fake.calls if call.method == "POST")


def problem_job(response: Any) -> dict[str, Any]:
    assert response.headers["content-type"].startswith("application/problem+json"), response.text
    job: dict[str, Any] = response.json()["job"]
    return job


async def test_first_engine_5xx_falls_back_and_charges_once_at_the_normal_price(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    gateway.extra["a2c"].fail_with_status(502)
    response = await gateway.client.post("/v1/text-to-image", json={**T2I, "n": 2}, headers=auth(key))
    assert response.status_code == 200, response.text
    job = response.json()
    assert (job["state"], job["engine"]) == ("succeeded", "qolaba")
    assert [(a["engine"], a["outcome"]) for a in job["attempts"]] == [("a2c", "failed"), ("qolaba", "succeeded")]
    assert job["attempts"][0]["error_class"] == "engine_failure"
    assert job["unit_price"] == UNIT_PRICE
    assert job["charged"] == 2 * UNIT_PRICE
    assert await charges(gateway, job["id"]) == [-800]
    assert await balance(gateway, key) == 10 - 2 * UNIT_PRICE
    await audit_clean(gateway)


async def test_first_engine_calling_the_request_invalid_stops_without_fallback_or_charge(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    gateway.extra["a2c"].fail_with_status(400)
    response = await gateway.client.post("/v1/text-to-image", json=T2I, headers=auth(key))
    assert response.status_code == 422
    problem = response.json()
    assert problem["type"].endswith("/engine-rejected-request")
    job = problem_job(response)
    assert job["state"] == "failed"
    assert [(a["engine"], a["outcome"]) for a in job["attempts"]] == [("a2c", "rejected")]
    assert submits(gateway.extra["qolaba"]) == 0
    assert job["charged"] == 0
    assert await charges(gateway, job["id"]) == []
    assert await balance(gateway, key) == 10
    await audit_clean(gateway)


async def test_all_engines_down_fails_the_job_releases_the_reservation_and_answers_503(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    gateway.extra["a2c"].fail_with_status(500)
    gateway.extra["qolaba"].fail_with_status(503)
    response = await gateway.client.post("/v1/text-to-image", json=T2I, headers=auth(key))
    assert response.status_code == 503
    assert response.json()["type"].endswith("/engines-unavailable")
    job = problem_job(response)
    assert job["state"] == "failed"
    assert {a["engine"] for a in job["attempts"]} == {"a2c", "qolaba"}
    assert all(a["outcome"] == "failed" for a in job["attempts"])
    assert await charges(gateway, job["id"]) == []
    held = (await gateway.client.get("/v1/balance", headers=auth(key))).json()
    assert (held["balance"], held["held"], held["active_jobs"]) == (10.0, 0.0, 0)
    await audit_clean(gateway)


async def test_rate_limited_engine_is_passed_over_for_the_next_one(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    gateway.extra["a2c"].fail_with_status(429, retry_after="30")
    started = time.monotonic()
    response = await gateway.client.post("/v1/text-to-image", json=T2I, headers=auth(key))
    job = response.json()
    assert job["state"] == "succeeded", job
    assert [(a["engine"], a["outcome"]) for a in job["attempts"]] == [("a2c", "rate_limited"), ("qolaba", "succeeded")]
    # The 30 s Retry-After applies to a2c only; the next engine is tried at once.
    assert time.monotonic() - started < 10
    assert job["charged"] == UNIT_PRICE
    await audit_clean(gateway)


async def test_sole_rate_limited_engine_is_retried_after_its_retry_after(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    gateway.extra["a2c"].fail_with_status(429, retry_after="1", times=1)
    started = time.monotonic()
    # Only a2c is allowed: the router must wait for its Retry-After instead of giving up.
    response = await gateway.client.post("/v1/text-to-image", json={**T2I, "engines": ["a2c"]}, headers=auth(key))
    elapsed = time.monotonic() - started
    job = response.json()
    assert response.status_code == 200, response.text
    assert [(a["engine"], a["outcome"]) for a in job["attempts"]] == [("a2c", "rate_limited"), ("a2c", "succeeded")]
    assert elapsed >= 1.0
    assert job["charged"] == UNIT_PRICE
    await audit_clean(gateway)


async def test_breaker_opens_skips_the_engine_then_recovers_through_half_open(make_gateway: Any) -> None:
    cool_down = 0.5
    gw: Gateway = await make_gateway(
        routing={
            "backoff_base_s": 0.0,
            "backoff_max_s": 0.01,
            "breaker_consecutive_failures": 2,
            "breaker_open_s": cool_down,
        }
    )
    _, key = await gw.tenant(credits=10)
    a2c = gw.extra["a2c"]
    a2c.fail_with_status(500)
    for _ in range(2):  # two failures in a row open a2c's breaker; qolaba serves both
        job = (await gw.client.post("/v1/text-to-image", json=T2I, headers=auth(key))).json()
        assert (job["state"], job["engine"]) == ("succeeded", "qolaba")
    state = (await engines(gw))["a2c"]
    assert (state["status"], state["breaker"]["state"]) == ("down", "open")
    assert state["breaker"]["consecutive_failures"] == 2
    assert state["breaker"]["opened_at"] is not None
    metrics = (await gw.client.get("/metrics")).text
    assert 'gateway_engine_breaker_open{engine="a2c"} 1.0' in metrics

    # Open: a2c is skipped without a request reaching it, and the skip is on the job.
    a2c.faults = Faults()
    before = submits(a2c)
    job = (await gw.client.post("/v1/text-to-image", json=T2I, headers=auth(key))).json()
    assert job["engine"] == "qolaba"
    assert job["attempts"][0]["engine"] == "a2c"
    assert job["attempts"][0]["outcome"] == "skipped"
    assert "circuit breaker open" in job["attempts"][0]["error"]
    assert submits(a2c) == before

    # After the cool-down one probe goes through; its success closes the breaker.
    await eventually(lambda: half_open(gw, "a2c"), what="a2c's breaker half open after its cool-down")
    job = (await gw.client.post("/v1/text-to-image", json=T2I, headers=auth(key))).json()
    assert (job["state"], job["engine"]) == ("succeeded", "a2c")
    assert submits(a2c) == before + 1
    state = (await engines(gw))["a2c"]
    assert (state["status"], state["breaker"]["state"], state["breaker"]["opened_at"]) == ("healthy", "closed", None)
    assert 'gateway_engine_breaker_open{engine="a2c"} 0.0' in (await gw.client.get("/metrics")).text
    assert await balance(gw, key) == round(10 - 4 * UNIT_PRICE, 3)
    await audit_clean(gw)


async def test_failed_probe_opens_the_breaker_again(make_gateway: Any) -> None:
    cool_down = 0.3
    gw: Gateway = await make_gateway(
        routing={"backoff_base_s": 0.0, "breaker_consecutive_failures": 1, "breaker_open_s": cool_down}
    )
    _, key = await gw.tenant(credits=10)
    a2c = gw.extra["a2c"]
    a2c.fail_with_status(503)
    await gw.client.post("/v1/text-to-image", json=T2I, headers=auth(key))
    await eventually(lambda: half_open(gw, "a2c"), what="a2c's breaker half open after its cool-down")
    before = submits(a2c)
    job = (await gw.client.post("/v1/text-to-image", json=T2I, headers=auth(key))).json()
    assert [(a["engine"], a["outcome"]) for a in job["attempts"]] == [("a2c", "failed"), ("qolaba", "succeeded")]
    assert submits(a2c) == before + 1  # exactly one probe
    assert (await engines(gw))["a2c"]["breaker"]["state"] == "open"
    await audit_clean(gw)


async def test_a_fallback_that_would_ignore_the_asked_seed_is_not_used_and_nothing_is_charged(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    gateway.extra["a2c"].fail_with_status(502)
    # qolaba takes no seed: an image from it would not be the one asked for.
    response = await gateway.client.post("/v1/text-to-image", json={**T2I, "seed": 1234}, headers=auth(key))
    assert response.status_code == 503, response.text
    job = problem_job(response)
    assert {a["engine"] for a in job["attempts"]} == {"a2c"}  # retried alone, qolaba never tried
    assert submits(gateway.extra["qolaba"]) == 0
    assert await charges(gateway, job["id"]) == []
    assert await balance(gateway, key) == 10
    await audit_clean(gateway)


async def test_each_attempt_records_what_its_engine_was_sent(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    gateway.extra["a2c"].fail_with_status(502)
    body = {**T2I, "negative_prompt": "fog", "guidance_scale": 6.0}
    response = await gateway.client.post("/v1/text-to-image", json=body, headers=auth(key))
    job = response.json()
    assert response.status_code == 200, job
    failed, served = job["attempts"]
    assert (failed["engine"], served["engine"]) == ("a2c", "qolaba")
    assert failed["received"]["steps"] == 30
    assert failed["received"]["negative_prompt"] == "fog"
    # qolaba has no steps or seed parameter; the seed was the gateway's choice, steps the default.
    assert "steps" not in served["received"]
    assert "seed" not in served["received"]
    assert (served["received"]["guidance_scale"], served["received"]["width"]) == (6.0, 512)
    stored = (await gateway.client.get(f"/v1/jobs/{job['id']}", headers=auth(key))).json()
    assert [a["received"] for a in stored["attempts"]] == [failed["received"], served["received"]]


async def test_a_field_no_routed_engine_honours_is_a_422_naming_it(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    # image-to-image routes to aithriving alone, whose form has no negative prompt.
    body = {"prompt": "x", "image": IMAGE, "negative_prompt": "fog", "width": 512, "height": 512}
    response = await gateway.client.post("/v1/image-to-image", json=body, headers=auth(key))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert [e["field"] for e in problem["errors"]] == ["negative_prompt"]
    assert "ait" in problem["errors"][0]["message"]
    assert submits(gateway.extra["ait"]) == 0
    assert await balance(gateway, key) == 10


async def test_vendor_refusing_our_credentials_opens_the_breaker_at_once_and_shows_on_the_engine(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    _, key = await gateway.tenant(credits=10)
    a2c = gateway.extra["a2c"]
    a2c.fail_with_status(401)
    before = time.time()
    with caplog.at_level(logging.ERROR, logger="gateway.routing.router"):
        response = await gateway.client.post("/v1/text-to-image", json=T2I, headers=auth(key))
    job = response.json()
    assert response.status_code == 200, job
    assert job["engine"] == "qolaba"
    attempts = [(a["engine"], a.get("error_class")) for a in job["attempts"]]
    assert attempts == [("a2c", "credentials_refused"), ("qolaba", None)]
    refused = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and "a2c" in r.getMessage()]
    assert len(refused) == 1
    assert "refused our credentials" in refused[0]

    state = (await engines(gateway))["a2c"]
    # One refusal is enough (the breaker needs 5 failures otherwise): no retry mends a bad key.
    assert (state["status"], state["breaker"]["state"]) == ("credentials_refused", "open")
    refused_at = datetime.fromisoformat(state["credentials_refused_at"])
    assert before - 1 <= refused_at.timestamp() <= time.time() + 1

    # The next request does not reach the vendor.
    submitted = submits(a2c)
    job = (await gateway.client.post("/v1/text-to-image", json=T2I, headers=auth(key))).json()
    assert (job["engine"], job["attempts"][0]["outcome"]) == ("qolaba", "skipped")
    assert submits(a2c) == submitted
    await audit_clean(gateway)


async def test_credentials_refused_by_the_only_engine_is_a_503_with_the_job_and_no_charge(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    gateway.extra["a2c"].fail_with_status(403)
    response = await gateway.client.post("/v1/text-to-image", json={**T2I, "engines": ["a2c"]}, headers=auth(key))
    assert response.status_code == 503, response.text
    job = problem_job(response)
    assert job["state"] == "failed"
    assert job["attempts"][0]["error_class"] == "credentials_refused"
    assert submits(gateway.extra["a2c"]) == 1  # tried once; the open breaker stops the retries
    assert await charges(gateway, job["id"]) == []
    assert await balance(gateway, key) == 10
    await audit_clean(gateway)
