"""No key gets a looser key than itself: not by creating one, not by rotating one, not through the
dashboard. A key may rotate itself, or a key within its own scopes, rate limit, cap and expiry."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from uuid import UUID

from gateway.auth import tokens
from tests.conftest import Gateway
from tests.integration.auth.test_authentication_api import bearer
from tests.integration.dashboard.test_dashboard_http import sign_in

CAP = 5_000  # millicredits: 5 credits
EXPIRES = datetime.now(UTC) + timedelta(days=1)


async def _narrow_key(gateway: Gateway, tenant_id: UUID, **columns: object) -> tuple[UUID, str]:
    """A keys:manage key with a cap, an expiry and a low rate limit; returns (id, secret)."""
    values: dict[str, object] = {
        "monthly_cap": CAP,
        "expires_at": EXPIRES,
        "rate_limit_per_minute": 1_000,
        "scopes": ["keys:manage", "usage:read"],
    }
    values.update(columns)
    key = await gateway.key(tenant_id, **values)  # type: ignore[arg-type]
    return await _key_id(gateway, key), key


async def _key_id(gateway: Gateway, secret: str) -> UUID:
    async with gateway.pool.acquire() as conn:
        key_id: UUID = await conn.fetchval(
            "SELECT key_id FROM api_key_secrets WHERE secret_hash = $1", tokens.hash_key(secret)
        )
    return key_id


async def _secret_count(gateway: Gateway, key_id: UUID) -> int:
    async with gateway.pool.acquire() as conn:
        count: int = await conn.fetchval("SELECT count(*) FROM api_key_secrets WHERE key_id = $1", key_id)
    return count


async def test_a_narrow_key_cannot_rotate_a_wider_key_through_the_api(gateway: Gateway) -> None:
    tenant_id, owner = await gateway.tenant()
    owner_id = await _key_id(gateway, owner)
    _, narrow = await _narrow_key(gateway, tenant_id)
    response = await gateway.client.post(f"/v1/keys/{owner_id}/rotate", headers=bearer(narrow), json={})
    assert response.status_code == 403, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert "key" not in problem
    assert set(problem["beyond_caller"]) == {"scopes", "rate_limit_per_minute", "monthly_cap", "expires_at"}
    # Nothing changed: no new secret, and the owner's key keeps working with no retirement pending.
    assert await _secret_count(gateway, owner_id) == 1
    async with gateway.pool.acquire() as conn:
        assert await conn.fetchval("SELECT retires_at FROM api_key_secrets WHERE key_id = $1", owner_id) is None
    assert (await gateway.client.get("/v1/keys", headers=bearer(owner))).status_code == 200


async def test_each_looser_limit_alone_refuses_the_rotation(gateway: Gateway) -> None:
    tenant_id, _ = await gateway.tenant()
    _, narrow = await _narrow_key(gateway, tenant_id)
    later = EXPIRES + timedelta(seconds=1)
    looser_targets: dict[str, dict[str, object]] = {
        "scopes": {"scopes": ["keys:manage", "usage:read", "generate"]},
        "rate_limit_per_minute": {"rate_limit_per_minute": 1_001},
        "monthly_cap": {"monthly_cap": CAP + 1},
        "expires_at": {"expires_at": later},
    }
    for field, looser in looser_targets.items():
        target_id, _ = await _narrow_key(gateway, tenant_id, **looser)
        response = await gateway.client.post(f"/v1/keys/{target_id}/rotate", headers=bearer(narrow), json={})
        assert response.status_code == 403, field
        assert response.json()["beyond_caller"] == [field]
    for field, column in (("monthly_cap", "monthly_cap"), ("expires_at", "expires_at")):
        target_id, _ = await _narrow_key(gateway, tenant_id, **{column: None})
        response = await gateway.client.post(f"/v1/keys/{target_id}/rotate", headers=bearer(narrow), json={})
        assert response.status_code == 403, f"an unlimited {field}"
        assert response.json()["beyond_caller"] == [field]


async def test_a_key_may_rotate_itself_and_keys_within_its_limits(gateway: Gateway) -> None:
    tenant_id, _ = await gateway.tenant()
    narrow_id, narrow = await _narrow_key(gateway, tenant_id)
    within_id, _ = await _narrow_key(
        gateway,
        tenant_id,
        scopes=["usage:read"],
        monthly_cap=CAP,
        rate_limit_per_minute=10,
        expires_at=datetime.now(UTC) + timedelta(hours=1),
    )
    response = await gateway.client.post(f"/v1/keys/{within_id}/rotate", headers=bearer(narrow), json={})
    assert response.status_code == 200, response.text
    rotated = await gateway.client.post(f"/v1/keys/{narrow_id}/rotate", headers=bearer(narrow), json={})
    assert rotated.status_code == 200, rotated.text
    assert (await gateway.client.get("/v1/keys", headers=bearer(rotated.json()["key"]))).status_code == 200


async def test_dashboard_key_creation_keeps_the_signed_in_keys_cap_expiry_and_rate(gateway: Gateway) -> None:
    tenant_id, _ = await gateway.tenant()
    # A rate limit below the 600 a new key gets by default.
    narrow_id, narrow = await _narrow_key(gateway, tenant_id, rate_limit_per_minute=100)
    gateway.client.follow_redirects = False
    token = await sign_in(gateway, narrow)
    response = await gateway.client.post(
        "/dashboard/keys",
        data={"csrf_token": token, "name": "from-dashboard", "scopes": "usage:read", "expires_in_days": ""},
    )
    assert response.status_code == 201, response.text
    async with gateway.pool.acquire() as conn:
        creator = await conn.fetchrow("SELECT * FROM api_keys WHERE id = $1", narrow_id)
        created = await conn.fetchrow("SELECT * FROM api_keys WHERE name = 'from-dashboard'")
    assert created["monthly_cap"] == CAP
    assert created["expires_at"] == creator["expires_at"]
    assert created["rate_limit_per_minute"] == creator["rate_limit_per_minute"] == 100
    # An expiry later than the signed-in key's is refused, and no key is made.
    later = await gateway.client.post(
        "/dashboard/keys",
        data={"csrf_token": token, "name": "later", "scopes": "usage:read", "expires_in_days": "30"},
    )
    assert later.status_code == 422
    assert "expiry" in later.text
    async with gateway.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM api_keys WHERE name = 'later'") == 0


async def test_dashboard_refuses_rotating_a_wider_key(gateway: Gateway) -> None:
    tenant_id, owner = await gateway.tenant()
    owner_id = await _key_id(gateway, owner)
    _, narrow = await _narrow_key(gateway, tenant_id)
    gateway.client.follow_redirects = False
    token = await sign_in(gateway, narrow)
    response = await gateway.client.post(
        f"/dashboard/keys/{owner_id}/rotate", data={"csrf_token": token, "grace_period_s": "604800"}
    )
    assert response.status_code == 403
    assert re.search(r'id="new-secret"', response.text) is None
    assert await _secret_count(gateway, owner_id) == 1
    assert (await gateway.client.get("/v1/keys", headers=bearer(owner))).status_code == 200
