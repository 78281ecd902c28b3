"""Self-service keys over HTTP: create, list, rotate, revoke, and tenant isolation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

from tests.conftest import Gateway
from tests.integration.auth.secrets_dump import assert_no_secret, dump_values
from tests.integration.auth.test_authentication_api import assert_unauthenticated, bearer
from tests.waiting import eventually

LISTED_FIELDS = {
    "id",
    "object",
    "name",
    "scopes",
    "hint",
    "rate_limit_per_minute",
    "monthly_cap",
    "created_at",
    "expires_at",
    "revoked_at",
    "last_used_at",
}


async def _create(gateway: Gateway, key: str, **body: object) -> dict[str, object]:
    response = await gateway.client.post("/v1/keys", headers=bearer(key), json={"name": "ci", **body})
    assert response.status_code == 201, response.text
    created: dict[str, object] = response.json()
    return created


async def test_created_key_is_shown_once_and_works(gateway: Gateway) -> None:
    tenant_id, admin_key = await gateway.tenant()
    expires = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    created = await _create(
        gateway,
        admin_key,
        scopes=["generate", "jobs:read"],
        expires_at=expires,
        rate_limit_per_minute=120,
        monthly_cap=25.5,
    )
    assert created["tenant_id"] == str(tenant_id)
    assert created["scopes"] == ["generate", "jobs:read"]
    key = str(created["key"])
    assert key.startswith("igw_")
    assert created["hint"] == key[-4:]
    listing = await gateway.client.get("/v1/keys", headers=bearer(admin_key))
    assert key not in listing.text
    (view,) = [k for k in listing.json()["data"] if k["id"] == created["id"]]
    assert set(view) == LISTED_FIELDS
    assert (view["rate_limit_per_minute"], view["monthly_cap"], view["hint"]) == (120, 25.5, key[-4:])
    assert view["revoked_at"] is None
    # The new key authenticates: it lacks keys:manage, so the guard answers 403 rather than 401.
    assert (await gateway.client.get("/v1/keys", headers=bearer(key))).status_code == 403


async def test_key_cannot_create_a_key_with_wider_scopes(gateway: Gateway) -> None:
    _, key = await gateway.tenant(scopes=["keys:manage", "generate"])
    response = await gateway.client.post(
        "/v1/keys", headers=bearer(key), json={"name": "wider", "scopes": ["generate", "usage:read"]}
    )
    assert response.status_code == 403
    assert response.json()["missing_scopes"] == ["usage:read"]
    await _create(gateway, key, scopes=["generate"])


async def test_invalid_key_requests_name_the_field(gateway: Gateway) -> None:
    _, key = await gateway.tenant()
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    cases = [
        ({"name": "x", "scopes": ["root"]}, "scopes[0]"),
        ({"name": "x", "scopes": []}, "scopes"),
        ({"name": "", "scopes": ["generate"]}, "name"),
        ({"name": "x", "scopes": ["generate"], "expires_at": past}, "expires_at"),
        ({"name": "x", "scopes": ["generate"], "monthly_cap": 1.0001}, "monthly_cap"),
        ({"name": "x", "scopes": ["generate"], "rate_limit_per_minute": "5"}, "rate_limit_per_minute"),
        ({"name": "x", "scopes": ["generate"], "owner": "me"}, ""),
    ]
    for body, field in cases:
        response = await gateway.client.post("/v1/keys", headers=bearer(key), json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["errors"][0]["field"] == field, (body, response.text)


async def test_rotation_grace_keeps_old_secret_working_then_ends(gateway: Gateway) -> None:
    _, admin_key = await gateway.tenant()
    created = await _create(gateway, admin_key, scopes=["keys:manage"])
    old = str(created["key"])
    assert (await gateway.client.get("/v1/keys", headers=bearer(old))).status_code == 200
    rotated = await gateway.client.post(
        f"/v1/keys/{created['id']}/rotate", headers=bearer(admin_key), json={"grace_period_s": 1}
    )
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()["key"]
    assert rotated.json()["id"] == created["id"]
    assert new != old
    assert (await gateway.client.get("/v1/keys", headers=bearer(old))).status_code == 200
    assert (await gateway.client.get("/v1/keys", headers=bearer(new))).status_code == 200

    # Validity is checked on every request against the cached row, so the grace ends on the second,
    # not a cache TTL (2 s) later: the old secret must be refused about 1.5 s after the rotation at most.
    async def old_refused() -> bool:
        return (await gateway.client.get("/v1/keys", headers=bearer(old))).status_code == 401

    await eventually(old_refused, timeout_s=1.5, what="the old secret refused at the end of its 1 s grace")
    assert_unauthenticated(await gateway.client.get("/v1/keys", headers=bearer(old)))
    listing = await gateway.client.get("/v1/keys", headers=bearer(new))
    assert listing.status_code == 200
    (view,) = [k for k in listing.json()["data"] if k["id"] == created["id"]]
    assert view["hint"] == new[-4:]


async def test_rotation_with_default_grace_retires_old_secret_at_once(gateway: Gateway) -> None:
    _, admin_key = await gateway.tenant()
    created = await _create(gateway, admin_key, scopes=["keys:manage"])
    rotated = await gateway.client.post(f"/v1/keys/{created['id']}/rotate", headers=bearer(admin_key), json={})
    assert rotated.status_code == 200, rotated.text
    assert_unauthenticated(await gateway.client.get("/v1/keys", headers=bearer(str(created["key"]))))
    assert (await gateway.client.get("/v1/keys", headers=bearer(rotated.json()["key"]))).status_code == 200


async def test_rotation_grace_is_bounded(gateway: Gateway) -> None:
    _, admin_key = await gateway.tenant()
    created = await _create(gateway, admin_key, scopes=["keys:manage"])
    for grace in (-1, 30 * 24 * 3600 + 1, "5", 1.5):
        response = await gateway.client.post(
            f"/v1/keys/{created['id']}/rotate", headers=bearer(admin_key), json={"grace_period_s": grace}
        )
        assert response.status_code == 422
        assert response.json()["errors"][0]["field"] == "grace_period_s"


async def test_revoked_key_cannot_be_rotated(gateway: Gateway) -> None:
    _, admin_key = await gateway.tenant()
    created = await _create(gateway, admin_key, scopes=["generate"])
    assert (await gateway.client.delete(f"/v1/keys/{created['id']}", headers=bearer(admin_key))).status_code == 200
    again = await gateway.client.delete(f"/v1/keys/{created['id']}", headers=bearer(admin_key))
    assert again.status_code == 200
    rotated = await gateway.client.post(f"/v1/keys/{created['id']}/rotate", headers=bearer(admin_key), json={})
    assert rotated.status_code == 409


async def test_tenant_can_never_read_or_change_another_tenants_keys(gateway: Gateway) -> None:
    _, key_a = await gateway.tenant()
    _, key_b = await gateway.tenant()
    b_created = await _create(gateway, key_b, scopes=["generate"])
    b_ids = {k["id"] for k in (await gateway.client.get("/v1/keys", headers=bearer(key_b))).json()["data"]}
    a_listing = (await gateway.client.get("/v1/keys", headers=bearer(key_a))).json()["data"]
    assert not b_ids & {k["id"] for k in a_listing}
    for key_id in [*b_ids, str(uuid4())]:
        for response in (
            await gateway.client.post(f"/v1/keys/{key_id}/rotate", headers=bearer(key_a), json={}),
            await gateway.client.delete(f"/v1/keys/{key_id}", headers=bearer(key_a)),
        ):
            assert response.status_code == 404, response.text
            assert response.json()["type"].endswith("/not-found")
    # B's keys are untouched: its admin key still works, its other key is not revoked.
    b_after = (await gateway.client.get("/v1/keys", headers=bearer(key_b))).json()["data"]
    assert all(k["revoked_at"] is None for k in b_after)
    assert any(k["id"] == b_created["id"] for k in b_after)


async def test_no_plaintext_key_is_stored_after_creating_and_rotating(gateway: Gateway) -> None:
    _, admin_key = await gateway.tenant()
    created = await _create(gateway, admin_key, scopes=["generate"])
    rotated = await gateway.client.post(
        f"/v1/keys/{created['id']}/rotate", headers=bearer(admin_key), json={"grace_period_s": 60}
    )
    made = await gateway.client.post(
        "/v1/admin/tenants", headers=bearer(gateway.operator_key), json={"name": "other", "credits": 1}
    )
    async with gateway.pool.acquire() as conn:
        values = await dump_values(conn)
    assert_no_secret(
        values, [admin_key, str(created["key"]), rotated.json()["key"], made.json()["key"]["key"], gateway.operator_key]
    )


async def test_a_key_cannot_mint_a_key_with_looser_limits_than_its_own(gateway: Gateway) -> None:
    _, admin_key = await gateway.tenant()
    creator_expiry = datetime.now(UTC) + timedelta(days=7)
    creator = await _create(
        gateway,
        admin_key,
        scopes=["keys:manage", "generate"],
        rate_limit_per_minute=100,
        monthly_cap=10,
        expires_at=creator_expiry.isoformat(),
    )
    narrow = str(creator["key"])
    later = (creator_expiry + timedelta(days=1)).isoformat()
    for field, value in (("rate_limit_per_minute", 101), ("monthly_cap", 10.001), ("expires_at", later)):
        response = await gateway.client.post(
            "/v1/keys", headers=bearer(narrow), json={"name": "x", "scopes": ["generate"], field: value}
        )
        assert response.status_code == 422, (field, response.text)
        assert response.json()["errors"][0]["field"] == field

    # Omitted limits are inherited, so the child is never looser than its creator.
    child = await _create(gateway, narrow, scopes=["generate"])
    listing = (await gateway.client.get("/v1/keys", headers=bearer(admin_key))).json()["data"]
    (view,) = [k for k in listing if k["id"] == child["id"]]
    assert (view["rate_limit_per_minute"], view["monthly_cap"]) == (100, 10.0)
    assert datetime.fromisoformat(view["expires_at"]) == creator_expiry
    within = await _create(gateway, narrow, scopes=["generate"], rate_limit_per_minute=50, monthly_cap=2)
    assert within["scopes"] == ["generate"]
