"""Admission and settlement run as one statement each (gateway/db/generations.py, settlements.py); they keep every rule
of the multi-statement versions: current prices, no overdraft under contention, monthly caps,
low-balance webhooks, cancellation while the engine works."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from gateway.db import billing as bq
from gateway.domain.money import PriceRule
from tests.conftest import Gateway
from tests.e2e.test_generation_billing import T2I, audit_clean, auth, balance
from tests.waiting import eventually


async def test_a_new_price_version_applies_to_the_next_request_despite_the_price_cache(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    first = await gateway.client.post("/v1/text-to-image", json=T2I, headers=auth(key))
    assert first.json()["charged"] == 0.4
    rules = [PriceRule(operation=op, base=800, cap=4000) for op in ("text-to-image", "image-to-image", "inpaint")]
    async with gateway.pool.acquire() as conn, conn.transaction():
        await bq.insert_price_version(conn, rules, "doubled", None)
    second = await gateway.client.post("/v1/text-to-image", json=T2I, headers=auth(key))
    assert second.status_code == 200, second.text
    assert second.json()["unit_price"] == 0.8
    assert second.json()["charged"] == 0.8
    assert (await balance(gateway, key))["balance"] == 8.8
    await audit_clean(gateway)


async def test_concurrent_requests_on_one_wallet_never_overdraw_it(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=1.0)  # room for two images at 0.4
    answers = await asyncio.gather(
        *(gateway.client.post("/v1/text-to-image", json=T2I, headers=auth(key)) for _ in range(6))
    )
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200, 200, 402, 402, 402, 402], [a.text for a in answers]
    assert await balance(gateway, key) == {"balance": 0.2, "held": 0.0, "available": 0.2, "active_jobs": 0}
    await audit_clean(gateway)


async def test_a_key_with_a_monthly_cap_is_refused_past_it(gateway: Gateway) -> None:
    tenant_id, _ = await gateway.tenant(credits=10)
    key = await gateway.key(tenant_id, name="capped", monthly_cap=500)
    first = await gateway.client.post("/v1/text-to-image", json=T2I, headers=auth(key))
    assert first.status_code == 200, first.text
    second = await gateway.client.post("/v1/text-to-image", json=T2I, headers=auth(key))
    assert second.status_code == 402
    assert second.json()["monthly_cap"] == 0.5
    await audit_clean(gateway)


async def test_crossing_the_low_balance_threshold_enqueues_one_webhook(gateway: Gateway) -> None:
    tenant_id, key = await gateway.tenant(credits=1.0)
    async with gateway.pool.acquire() as conn:
        await conn.execute("UPDATE tenants SET webhook_url = 'https://hooks.example/t' WHERE id = $1", tenant_id)
        await bq.set_low_balance_threshold(conn, tenant_id, 700)
    for _ in range(2):
        response = await gateway.client.post("/v1/text-to-image", json=T2I, headers=auth(key))
        assert response.status_code == 200, response.text
    async with gateway.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT event_type, url, payload FROM webhook_outbox WHERE tenant_id = $1 ORDER BY id", tenant_id
        )
        notified = await conn.fetchval("SELECT low_balance_notified FROM wallets WHERE tenant_id = $1", tenant_id)
    events = [r["event_type"] for r in rows]
    assert events.count("job.succeeded") == 2
    low = [r for r in rows if r["event_type"] == "balance.low"]
    assert len(low) == 1
    assert low[0]["url"] == "https://hooks.example/t"
    # The test pool has no jsonb codec: the payload comes back as JSON text.
    assert json.loads(low[0]["payload"]) == {"type": "balance.low", "data": {"available": 0.6, "threshold": 0.7}}
    assert notified is True
    await audit_clean(gateway)


async def test_a_job_canceled_while_its_engine_works_costs_nothing(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    gateway.extra["a2c"].hang(1.0)
    submitted = await gateway.client.post("/v1/text-to-image", json={**T2I, "async": True}, headers=auth(key))
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    await eventually(lambda: gateway.extra["a2c"].calls, what="a runner calling the engine")
    canceled = await gateway.client.post(f"/v1/jobs/{job_id}/cancel", headers=auth(key))
    assert canceled.status_code == 200

    async def finished() -> dict[str, Any] | None:
        job: dict[str, Any] = (await gateway.client.get(f"/v1/jobs/{job_id}", headers=auth(key))).json()
        return job if job["state"] not in ("queued", "running") else None

    job = await eventually(finished, what="the job finished")
    assert job["state"] == "canceled", job
    assert job["charged"] == 0.0
    assert [r["status"] for r in job["results"]] == ["failed"]
    assert await balance(gateway, key) == {"balance": 10.0, "held": 0.0, "available": 10.0, "active_jobs": 0}
    await audit_clean(gateway)


@pytest.mark.parametrize("case", ["one image", "two of four images", "after a fallback"])
async def test_a_sync_answer_shows_the_job_exactly_as_reading_it_back_does(gateway: Gateway, case: str) -> None:
    # The sync answer is built from what the settlement statement returned, not read back: it must
    # not differ from GET /v1/jobs/{id} in any field (results, attempts, timestamps, progress).
    _, key = await gateway.tenant(credits=10)
    body = dict(T2I)
    if case == "two of four images":
        gateway.extra["a2c"].fewer_outputs(2)
        body["n"] = 4
    if case == "after a fallback":
        gateway.extra["a2c"].fail_with_status(503)
    answer = await gateway.client.post("/v1/text-to-image", json=body, headers=auth(key))
    assert answer.status_code == 200, answer.text
    read_back = await gateway.client.get(f"/v1/jobs/{answer.json()['id']}", headers=auth(key))
    assert read_back.status_code == 200
    assert answer.json() == read_back.json()
    assert len(answer.json()["attempts"]) == (2 if case == "after a fallback" else 1)
