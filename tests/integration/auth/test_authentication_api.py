"""Who gets in: the 401 and 403 answers, rate limits, and how fast key changes reach every replica."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from gateway.auth import tokens
from tests.conftest import Gateway
from tests.waiting import eventually

GENERIC = "The API key is missing, malformed, unknown, expired or revoked."


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_unauthenticated(response: Any) -> None:
    """Every refusal looks the same, so a caller cannot probe which keys exist."""
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers["www-authenticate"].startswith("Bearer")
    body = response.json()
    assert body["type"].endswith("/unauthenticated")
    assert body["detail"] == GENERIC


async def test_missing_key_is_unauthenticated(gateway: Gateway) -> None:
    assert_unauthenticated(await gateway.client.get("/v1/keys"))


async def test_malformed_key_is_unauthenticated(gateway: Gateway) -> None:
    _, key = await gateway.tenant()
    # Last character changed: the checksum no longer matches.
    broken = key[:-1] + ("A" if key[-1] != "A" else "B")
    for presented in ("nonsense", broken, key + "x"):
        assert_unauthenticated(await gateway.client.get("/v1/keys", headers=bearer(presented)))
    assert_unauthenticated(await gateway.client.get("/v1/keys", headers={"Authorization": f"Basic {key}"}))


async def test_unknown_key_is_unauthenticated(gateway: Gateway) -> None:
    assert_unauthenticated(await gateway.client.get("/v1/keys", headers=bearer(tokens.new_key("tenant"))))
    assert_unauthenticated(await gateway.client.get("/v1/admin/tenants", headers=bearer(tokens.new_key("operator"))))


async def test_expired_key_is_unauthenticated(gateway: Gateway) -> None:
    _, key = await gateway.tenant()
    async with gateway.pool.acquire() as conn:
        await conn.execute(
            "UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = "
            "(SELECT key_id FROM api_key_secrets WHERE secret_hash = $1)",
            tokens.hash_key(key),
        )
    assert_unauthenticated(await gateway.client.get("/v1/keys", headers=bearer(key)))


async def test_revoked_key_is_unauthenticated(gateway: Gateway) -> None:
    _, key = await gateway.tenant()
    listed = (await gateway.client.get("/v1/keys", headers=bearer(key))).json()["data"]
    revoked = await gateway.client.delete(f"/v1/keys/{listed[0]['id']}", headers=bearer(key))
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    assert_unauthenticated(await gateway.client.get("/v1/keys", headers=bearer(key)))


async def test_suspended_tenants_key_is_unauthenticated(gateway: Gateway) -> None:
    tenant_id, key = await gateway.tenant()
    assert (await gateway.client.get("/v1/keys", headers=bearer(key))).status_code == 200
    admin = bearer(gateway.operator_key)
    suspended = await gateway.client.post(f"/v1/admin/tenants/{tenant_id}/suspend", headers=admin)
    assert suspended.json()["status"] == "suspended"
    assert_unauthenticated(await gateway.client.get("/v1/keys", headers=bearer(key)))
    await gateway.client.post(f"/v1/admin/tenants/{tenant_id}/resume", headers=admin)
    assert (await gateway.client.get("/v1/keys", headers=bearer(key))).status_code == 200


async def test_key_without_the_scope_is_forbidden(gateway: Gateway) -> None:
    _, key = await gateway.tenant(scopes=["generate", "jobs:read"])
    response = await gateway.client.get("/v1/keys", headers=bearer(key))
    assert response.status_code == 403
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["required_scope"] == "keys:manage"


async def test_tenant_key_on_operator_endpoint_is_forbidden(gateway: Gateway) -> None:
    tenant_id, key = await gateway.tenant()
    for response in (
        await gateway.client.get("/v1/admin/tenants", headers=bearer(key)),
        await gateway.client.post(
            f"/v1/admin/tenants/{tenant_id}/credits", headers=bearer(key), json={"amount": 1000, "reason": "free money"}
        ),
    ):
        assert response.status_code == 403
        assert response.json()["type"].endswith("/permission-denied")


async def test_operator_key_on_tenant_endpoint_is_forbidden(gateway: Gateway) -> None:
    response = await gateway.client.get("/v1/keys", headers=bearer(gateway.operator_key))
    assert response.status_code == 403


async def test_key_is_accepted_in_x_api_key_header(gateway: Gateway) -> None:
    _, key = await gateway.tenant()
    assert (await gateway.client.get("/v1/keys", headers={"X-Api-Key": key})).status_code == 200


async def test_rate_limit_answers_429_with_retry_after_and_ratelimit_headers(gateway: Gateway) -> None:
    _, admin_key = await gateway.tenant()
    created = await gateway.client.post(
        "/v1/keys",
        headers=bearer(admin_key),
        json={"name": "slow", "scopes": ["keys:manage"], "rate_limit_per_minute": 2},
    )
    key = created.json()["key"]
    for remaining in ("1", "0"):
        ok = await gateway.client.get("/v1/keys", headers=bearer(key))
        assert ok.status_code == 200
        assert ok.headers["ratelimit-limit"] == "2"
        assert ok.headers["ratelimit-remaining"] == remaining
    limited = await gateway.client.get("/v1/keys", headers=bearer(key))
    assert limited.status_code == 429
    assert limited.headers["content-type"].startswith("application/problem+json")
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.headers["ratelimit-limit"] == "2"
    assert limited.headers["ratelimit-remaining"] == "0"
    assert int(limited.headers["ratelimit-reset"]) >= 1
    # The limit is per key: the tenant's other key is unaffected.
    assert (await gateway.client.get("/v1/keys", headers=bearer(admin_key))).status_code == 200


async def test_revocation_reaches_another_replica_within_five_seconds(
    gateway: Gateway, make_gateway: Callable[..., Awaitable[Gateway]]
) -> None:
    other = await make_gateway()
    _, key = await gateway.tenant()
    # The other replica has the key cached as valid before the revocation.
    assert (await other.client.get("/v1/keys", headers=bearer(key))).status_code == 200
    key_id = (await gateway.client.get("/v1/keys", headers=bearer(key))).json()["data"][0]["id"]
    assert (await gateway.client.delete(f"/v1/keys/{key_id}", headers=bearer(key))).status_code == 200
    assert_unauthenticated(await gateway.client.get("/v1/keys", headers=bearer(key)))

    async def other_refuses() -> bool:
        return (await other.client.get("/v1/keys", headers=bearer(key))).status_code != 200

    await eventually(other_refuses, timeout_s=5, what="the other replica refusing the revoked key")
    assert_unauthenticated(await other.client.get("/v1/keys", headers=bearer(key)))
