"""Operators set a tenant's low-balance threshold; the tenant is alerted once per crossing."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID, uuid4

from tests.conftest import Gateway
from tests.e2e.test_generation_billing import T2I, audit_clean, auth, balance


async def set_threshold(gw: Gateway, tenant_id: UUID, threshold: Any) -> Any:
    return await gw.client.put(
        f"/v1/admin/tenants/{tenant_id}/low-balance-threshold",
        json={"threshold": threshold},
        headers=auth(gw.operator_key),
    )


async def top_up(gw: Gateway, tenant_id: UUID, amount: float) -> None:
    response = await gw.client.post(
        f"/v1/admin/tenants/{tenant_id}/credits",
        json={"amount": amount, "reason": "top-up"},
        headers=auth(gw.operator_key),
    )
    assert response.status_code == 201, response.text


async def generate(gw: Gateway, key: str) -> None:
    response = await gw.client.post("/v1/text-to-image", json=T2I, headers=auth(key))
    assert response.json()["charged"] == 0.4, response.text


async def low_balance_events(gw: Gateway, tenant_id: UUID) -> list[dict[str, Any]]:
    async with gw.pool.acquire() as conn:
        rows = await conn.fetch(
            """SELECT message_id, url, payload FROM webhook_outbox
               WHERE tenant_id = $1 AND event_type = 'balance.low' ORDER BY id""",
            tenant_id,
        )
    return [{**r, "payload": json.loads(r["payload"])} for r in rows]


async def test_the_operator_sets_the_threshold_and_the_tenant_sees_it(gateway: Gateway) -> None:
    tenant_id, key = await gateway.tenant(credits=10)
    response = await set_threshold(gateway, tenant_id, 2.5)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "tenant_id": str(tenant_id),
        "object": "wallet",
        "balance": 10.0,
        "held": 0.0,
        "available": 10.0,
        "active_jobs": 0,
        "low_balance_threshold": 2.5,
        "low_balance_alert_sent": False,
    }
    assert (await balance(gateway, key))["low_balance_threshold"] == 2.5

    assert (await set_threshold(gateway, tenant_id, None)).json()["low_balance_threshold"] is None
    assert "low_balance_threshold" not in await balance(gateway, key)


async def test_only_operators_set_valid_thresholds_of_existing_tenants(gateway: Gateway) -> None:
    tenant_id, key = await gateway.tenant(credits=10)
    assert (await set_threshold(gateway, uuid4(), 1)).status_code == 404
    for bad in (-1, 0.0001, "1"):
        response = await set_threshold(gateway, tenant_id, bad)
        assert response.status_code == 422, bad
        assert response.json()["errors"][0]["field"] == "threshold"
    as_tenant = await gateway.client.put(
        f"/v1/admin/tenants/{tenant_id}/low-balance-threshold", json={"threshold": 1}, headers=auth(key)
    )
    assert as_tenant.status_code == 403


async def test_balance_low_is_sent_once_per_crossing_and_re_arms_after_a_top_up(gateway: Gateway) -> None:
    tenant_id, key = await gateway.tenant(credits=2)
    async with gateway.pool.acquire() as conn:
        await conn.execute("UPDATE tenants SET webhook_url = 'https://hooks.example/gw' WHERE id = $1", tenant_id)
    await set_threshold(gateway, tenant_id, 1.0)

    for _ in range(2):  # 1.6, then 1.2: still above
        await generate(gateway, key)
    assert await low_balance_events(gateway, tenant_id) == []
    await generate(gateway, key)  # 0.8: crosses below 1.0
    events = await low_balance_events(gateway, tenant_id)
    assert len(events) == 1
    assert events[0]["url"] == "https://hooks.example/gw"
    assert events[0]["payload"] == {"type": "balance.low", "data": {"available": 0.8, "threshold": 1.0}}
    await generate(gateway, key)  # 0.4: still below, no second alert
    assert len(await low_balance_events(gateway, tenant_id)) == 1

    await top_up(gateway, tenant_id, 0.3)  # 0.7: still below, the alert stays spent
    await generate(gateway, key)  # 0.3
    assert len(await low_balance_events(gateway, tenant_id)) == 1

    await top_up(gateway, tenant_id, 0.8)  # 1.1: back above, re-armed
    await generate(gateway, key)  # 0.7: a new crossing
    events = await low_balance_events(gateway, tenant_id)
    assert len(events) == 2
    assert events[0]["message_id"] != events[1]["message_id"]
    assert events[1]["payload"]["data"]["available"] == 0.7
    await audit_clean(gateway)
