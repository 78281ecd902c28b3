"""A tenant generates images through the gateway and pays exactly for what it received."""

from __future__ import annotations

from typing import Any

from gateway.db.audit import run_audit
from tests.conftest import Gateway
from tests.waiting import eventually

T2I = {"prompt": "a lighthouse at dusk", "width": 512, "height": 512, "steps": 30}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def audit_clean(gw: Gateway) -> None:
    async with gw.pool.acquire() as conn:
        assert await run_audit(conn) == {}


async def balance(gw: Gateway, key: str) -> dict[str, Any]:
    response = await gw.client.get("/v1/balance", headers=auth(key))
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


async def test_sync_text_to_image_charges_one_image_and_serves_the_file(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    response = await gateway.client.post("/v1/text-to-image", json=T2I, headers=auth(key))
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["state"] == "succeeded"
    assert job["charged"] == 0.4
    assert job["engine"] == "a2c"
    file = await gateway.client.get(job["results"][0]["url"])
    assert file.status_code == 200
    assert file.headers["content-type"] == "image/png"
    assert file.content.startswith(b"\x89PNG")
    assert await balance(gateway, key) == {"balance": 9.6, "held": 0.0, "available": 9.6, "active_jobs": 0}
    await audit_clean(gateway)


async def test_batch_of_four_with_two_outputs_charges_exactly_two_images(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    gateway.extra["a2c"].fewer_outputs(2)
    response = await gateway.client.post("/v1/text-to-image", json={**T2I, "n": 4}, headers=auth(key))
    job = response.json()
    assert job["state"] == "succeeded", job
    assert job["images_succeeded"] == 2
    assert job["charged"] == 0.8
    assert [r["status"] for r in job["results"]] == ["succeeded", "succeeded", "failed", "failed"]
    assert (await balance(gateway, key))["balance"] == 9.2
    await audit_clean(gateway)


async def test_first_engine_failing_falls_back_and_charges_once(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    gateway.extra["a2c"].fail_with_status(503)
    response = await gateway.client.post("/v1/text-to-image", json=T2I, headers=auth(key))
    job = response.json()
    assert job["state"] == "succeeded", job
    assert job["engine"] == "qolaba"
    assert [a["engine"] for a in job["attempts"]] == ["a2c", "qolaba"]
    assert job["charged"] == 0.4
    await audit_clean(gateway)


async def test_all_engines_down_fails_the_job_and_releases_the_reservation(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    gateway.extra["a2c"].fail_with_status(500)
    gateway.extra["qolaba"].fail_with_status(500)
    response = await gateway.client.post("/v1/text-to-image", json=T2I, headers=auth(key))
    assert response.status_code == 503
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["job"]["state"] == "failed"
    assert await balance(gateway, key) == {"balance": 10.0, "held": 0.0, "available": 10.0, "active_jobs": 0}
    await audit_clean(gateway)


async def test_insufficient_credits_is_402_with_the_shortfall(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=1)
    response = await gateway.client.post("/v1/text-to-image", json={**T2I, "n": 4}, headers=auth(key))
    assert response.status_code == 402
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["price"] == 1.6
    assert problem["shortfall"] == 0.6
    await audit_clean(gateway)


async def test_the_same_idempotency_key_never_charges_twice(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    headers = {**auth(key), "Idempotency-Key": "order-42"}
    first = await gateway.client.post("/v1/text-to-image", json=T2I, headers=headers)
    second = await gateway.client.post("/v1/text-to-image", json=T2I, headers=headers)
    assert first.status_code == 200
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    other = await gateway.client.post("/v1/text-to-image", json={**T2I, "prompt": "other"}, headers=headers)
    assert other.status_code == 409
    assert (await balance(gateway, key))["balance"] == 9.6
    await audit_clean(gateway)


async def test_malformed_json_and_wrong_types_get_problem_json_naming_the_problem(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    headers = {**auth(key), "Content-Type": "application/json"}
    malformed = await gateway.client.post("/v1/text-to-image", content=b'{"prompt": ', headers=headers)
    assert malformed.status_code == 400
    assert malformed.headers["content-type"].startswith("application/problem+json")
    wrong = await gateway.client.post("/v1/text-to-image", json={**T2I, "n": "2"}, headers=auth(key))
    assert wrong.status_code == 422
    assert wrong.json()["errors"][0]["field"] == "n"
    unknown = await gateway.client.post("/v1/text-to-image", json={**T2I, "colour": "red"}, headers=auth(key))
    assert unknown.status_code == 422
    assert "colour" in unknown.json()["detail"]
    missing_route = await gateway.client.get("/v1/nowhere", headers=auth(key))
    assert missing_route.status_code == 404
    assert missing_route.headers["content-type"].startswith("application/problem+json")


async def test_async_request_is_queued_and_finished_by_the_runner(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    response = await gateway.client.post("/v1/text-to-image", json={**T2I, "async": True}, headers=auth(key))
    assert response.status_code == 202
    location = response.headers["location"]

    async def succeeded() -> bool:
        job = (await gateway.client.get(location, headers=auth(key))).json()
        return bool(job["state"] == "succeeded")

    await eventually(succeeded, what="the job succeeded")
    await audit_clean(gateway)


async def test_another_tenants_job_is_not_found(gateway: Gateway) -> None:
    _, key_a = await gateway.tenant(credits=10)
    _, key_b = await gateway.tenant(credits=10)
    job = (await gateway.client.post("/v1/text-to-image", json=T2I, headers=auth(key_a))).json()
    response = await gateway.client.get(f"/v1/jobs/{job['id']}", headers=auth(key_b))
    assert response.status_code == 404
