"""Operators publish versioned price books; every job keeps the price it was admitted with."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from tests.conftest import Gateway
from tests.e2e.test_generation_billing import T2I, audit_clean, auth, balance
from tests.waiting import eventually

OPERATIONS = ("text-to-image", "image-to-image", "inpaint")


def book(base: float, cap: float, **extra: Any) -> dict[str, Any]:
    """A price book charging `base` (up to `cap`) for every operation."""
    return {"rules": [{"operation": op, "base": base, "cap": cap} for op in OPERATIONS], **extra}


async def publish(gw: Gateway, body: dict[str, Any]) -> Any:
    return await gw.client.post("/v1/admin/prices", json=body, headers=auth(gw.operator_key))


async def wait_finished(gw: Gateway, key: str, location: str) -> dict[str, Any]:
    async def finished() -> dict[str, Any] | None:
        job: dict[str, Any] = (await gw.client.get(location, headers=auth(key))).json()
        return job if job["state"] in ("succeeded", "failed", "canceled") else None

    job: dict[str, Any] = await eventually(finished, timeout_s=20, what="the job finished")
    return job


async def test_the_default_price_book_charges_0_4_credits_up_to_a_cap_of_2(gateway: Gateway) -> None:
    response = await gateway.client.get("/v1/admin/prices", headers=auth(gateway.operator_key))
    assert response.status_code == 200, response.text
    current = response.json()
    assert current["id"] == 1
    assert {r["operation"] for r in current["rules"]} == set(OPERATIONS)
    for rule in current["rules"]:
        assert (rule["model"], rule["base"], rule["cap"], rule["ref_pixels"], rule["ref_steps"]) == (
            "",
            0.4,
            2.0,
            512 * 512,
            30,
        )


async def test_tenant_keys_can_neither_read_nor_change_prices(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    assert (await gateway.client.get("/v1/admin/prices", headers=auth(key))).status_code == 403
    response = await gateway.client.post("/v1/admin/prices", json=book(0.0, 0.0), headers=auth(key))
    assert response.status_code == 403
    assert (await gateway.client.get("/v1/admin/prices")).status_code == 401


async def test_a_published_book_prices_new_requests_and_is_kept_in_the_history(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    response = await publish(gateway, book(0.5, 3.0, note="summer prices"))
    assert response.status_code == 201, response.text
    published = response.json()
    assert published["id"] == 2
    assert published["note"] == "summer prices"
    assert published["created_by_key_id"] is not None
    current = (await gateway.client.get("/v1/admin/prices", headers=auth(gateway.operator_key))).json()
    assert current == published

    job = (await gateway.client.post("/v1/text-to-image", json=T2I, headers=auth(key))).json()
    assert (job["unit_price"], job["charged"]) == (0.5, 0.5)
    # Twice the reference pixels at twice the reference steps: 4 x base.
    big = {**T2I, "width": 1024, "height": 512, "steps": 60}
    job = (await gateway.client.post("/v1/text-to-image", json=big, headers=auth(key))).json()
    assert job["charged"] == 2.0
    assert (await balance(gateway, key))["balance"] == 7.5

    history = (await gateway.client.get("/v1/admin/prices/versions", headers=auth(gateway.operator_key))).json()
    assert [v["id"] for v in history["data"]] == [2, 1]
    assert history["data"][0]["rules"] == 3
    old = await gateway.client.get("/v1/admin/prices/versions/1", headers=auth(gateway.operator_key))
    assert old.json()["rules"][0]["base"] == 0.4
    missing = await gateway.client.get("/v1/admin/prices/versions/99", headers=auth(gateway.operator_key))
    assert missing.status_code == 404
    await audit_clean(gateway)


async def test_price_history_pages_with_a_cursor(gateway: Gateway) -> None:
    for base in (0.1, 0.2, 0.3):
        assert (await publish(gateway, book(base, 2.0))).status_code == 201
    headers = auth(gateway.operator_key)
    first = (await gateway.client.get("/v1/admin/prices/versions?limit=3", headers=headers)).json()
    assert [v["id"] for v in first["data"]] == [4, 3, 2]
    rest = await gateway.client.get(f"/v1/admin/prices/versions?limit=3&cursor={first['next_cursor']}", headers=headers)
    assert [v["id"] for v in rest.json()["data"]] == [1]
    assert rest.json()["next_cursor"] is None


async def test_a_book_must_price_every_operation_by_default(gateway: Gateway) -> None:
    body = {"rules": [{"operation": "text-to-image", "base": 0.4, "cap": 2.0}]}
    response = await publish(gateway, body)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "rules"
    assert "image-to-image" in response.json()["detail"]
    # A model-specific rule does not stand in for the operation's default.
    rules = book(0.4, 2.0)["rules"]
    rules[2] = {"operation": "inpaint", "model": "sdxl", "base": 0.4, "cap": 2.0}
    assert (await publish(gateway, {"rules": rules})).status_code == 422
    current = (await gateway.client.get("/v1/admin/prices", headers=auth(gateway.operator_key))).json()
    assert current["id"] == 1


async def test_invalid_rules_are_refused_naming_the_field(gateway: Gateway) -> None:
    rules = book(0.4, 2.0)["rules"]
    cases = [
        ({**rules[0], "cap": 0.3}, "rules[0].cap"),
        ({**rules[0], "base": 0.0004}, "rules[0].base"),
        ({**rules[0], "base": -1}, "rules[0].base"),
        ({**rules[0], "ref_steps": 0}, "rules[0].ref_steps"),
        ({**rules[0], "operation": "upscale"}, "rules[0].operation"),
        ({**rules[0], "colour": "red"}, "rules[0]"),
    ]
    for bad, field in cases:
        response = await publish(gateway, {"rules": [bad, *rules[1:]]})
        assert response.status_code == 422, (bad, response.text)
        assert response.json()["errors"][0]["field"].startswith(field), (bad, response.json())
    duplicate = await publish(gateway, {"rules": [*rules, rules[0]]})
    assert duplicate.status_code == 422
    assert duplicate.json()["errors"][0]["field"] == "rules[3]"


async def test_a_queued_job_is_charged_the_price_it_was_admitted_with(
    make_gateway: Callable[..., Awaitable[Gateway]],
) -> None:
    # No runner on the API instance: the job waits in the queue while the prices change.
    api = await make_gateway(run_worker=False)
    _, key = await api.tenant(credits=10)
    response = await api.client.post("/v1/text-to-image", json={**T2I, "async": True}, headers=auth(key))
    assert response.status_code == 202, response.text
    location = response.headers["location"]
    assert (await balance(api, key))["held"] == 0.4

    assert (await publish(api, book(1.0, 5.0))).status_code == 201
    await make_gateway()  # a replica with a runner picks the queued job up
    job = await wait_finished(api, key, location)
    assert job["state"] == "succeeded", job
    assert (job["unit_price"], job["charged"]) == (0.4, 0.4)
    async with api.pool.acquire() as conn:
        version = await conn.fetchval("SELECT price_version_id FROM jobs WHERE id = $1", job["id"])
    assert version == 1

    newer = (await api.client.post("/v1/text-to-image", json=T2I, headers=auth(key))).json()
    assert newer["charged"] == 1.0
    assert await balance(api, key) == {"balance": 8.6, "held": 0.0, "available": 8.6, "active_jobs": 0}
    await audit_clean(api)
