"""The operator API: tenants, their keys and their credits, always as ledger entries."""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

from gateway.auth import tokens
from gateway.auth.keys import SCOPES
from tests.conftest import Gateway
from tests.integration.auth.test_authentication_api import bearer
from tests.waiting import eventually


async def _operator_key_id(gateway: Gateway) -> UUID:
    async with gateway.pool.acquire() as conn:
        key_id: UUID = await conn.fetchval(
            "SELECT id FROM operator_keys WHERE secret_hash = $1", tokens.hash_key(gateway.operator_key)
        )
    return key_id


async def _new_tenant(gateway: Gateway, **body: Any) -> dict[str, Any]:
    response = await gateway.client.post(
        "/v1/admin/tenants", headers=bearer(gateway.operator_key), json={"name": "acme", **body}
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def test_new_tenant_gets_wallet_topup_entry_and_first_key(gateway: Gateway) -> None:
    created = await _new_tenant(gateway, credits=12.345, max_concurrent_jobs=3)
    tenant, key = created["tenant"], created["key"]
    assert (tenant["name"], tenant["status"], tenant["max_concurrent_jobs"]) == ("acme", "active", 3)
    assert (tenant["balance"], tenant["held"], tenant["available"]) == (12.345, 0.0, 12.345)
    assert key["scopes"] == list(SCOPES)
    assert key["tenant_id"] == tenant["id"]
    async with gateway.pool.acquire() as conn:
        entries = await conn.fetch(
            "SELECT kind, amount, operator_key_id FROM ledger_entries WHERE tenant_id = $1", UUID(tenant["id"])
        )
    assert [tuple(e) for e in entries] == [("topup", 12_345, await _operator_key_id(gateway))]
    balance = await gateway.client.get("/v1/keys", headers=bearer(key["key"]))
    assert balance.status_code == 200


async def test_tenants_are_listed_in_cursor_pages(gateway: Gateway) -> None:
    made = {(await _new_tenant(gateway, name=f"t{i}"))["tenant"]["id"] for i in range(5)}
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (
            await gateway.client.get("/v1/admin/tenants", params=params, headers=bearer(gateway.operator_key))
        ).json()
        assert len(page["data"]) <= 2
        seen.extend(t["id"] for t in page["data"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 5
    assert set(seen) == made
    bad = await gateway.client.get("/v1/admin/tenants", params={"cursor": "nope"}, headers=bearer(gateway.operator_key))
    assert bad.status_code == 422


async def test_unknown_tenant_is_not_found(gateway: Gateway) -> None:
    missing = uuid4()
    headers = bearer(gateway.operator_key)
    for response in (
        await gateway.client.get(f"/v1/admin/tenants/{missing}", headers=headers),
        await gateway.client.post(f"/v1/admin/tenants/{missing}/suspend", headers=headers),
        await gateway.client.get(f"/v1/admin/tenants/{missing}/keys", headers=headers),
        await gateway.client.post(
            f"/v1/admin/tenants/{missing}/keys", headers=headers, json={"name": "x", "scopes": ["generate"]}
        ),
        await gateway.client.post(
            f"/v1/admin/tenants/{missing}/credits", headers=headers, json={"amount": 1, "reason": "x"}
        ),
    ):
        assert response.status_code == 404, response.text


async def test_operator_lists_and_creates_a_tenants_keys(gateway: Gateway) -> None:
    created = await _new_tenant(gateway)
    tenant_id = created["tenant"]["id"]
    headers = bearer(gateway.operator_key)
    made = await gateway.client.post(
        f"/v1/admin/tenants/{tenant_id}/keys",
        headers=headers,
        json={"name": "batch", "scopes": ["generate"], "monthly_cap": 10},
    )
    assert made.status_code == 201, made.text
    listing = await gateway.client.get(f"/v1/admin/tenants/{tenant_id}/keys", headers=headers)
    assert [k["name"] for k in listing.json()["data"]] == ["default", "batch"]
    assert made.json()["key"] not in listing.text
    assert created["key"]["key"] not in listing.text
    assert listing.json()["data"][1]["monthly_cap"] == 10.0


async def test_get_tenant_shows_wallet(gateway: Gateway) -> None:
    tenant_id = (await _new_tenant(gateway, credits=2))["tenant"]["id"]
    response = await gateway.client.get(f"/v1/admin/tenants/{tenant_id}", headers=bearer(gateway.operator_key))
    assert response.status_code == 200
    assert (response.json()["id"], response.json()["balance"]) == (tenant_id, 2.0)


async def test_topup_and_adjustment_are_ledger_entries_naming_the_operator_key(gateway: Gateway) -> None:
    tenant_id = (await _new_tenant(gateway, credits=1))["tenant"]["id"]
    url, headers = f"/v1/admin/tenants/{tenant_id}/credits", bearer(gateway.operator_key)
    topup = await gateway.client.post(url, headers=headers, json={"amount": 5.5, "reason": "invoice 42"})
    assert topup.status_code == 201, topup.text
    adjust = await gateway.client.post(
        url, headers=headers, json={"amount": -2.25, "reason": "goodwill reversal", "kind": "adjustment"}
    )
    assert adjust.status_code == 201, adjust.text
    operator_id = str(await _operator_key_id(gateway))
    assert {k: topup.json()[k] for k in ("kind", "amount", "balance_after", "reason", "operator_key_id")} == {
        "kind": "topup",
        "amount": 5.5,
        "balance_after": 6.5,
        "reason": "invoice 42",
        "operator_key_id": operator_id,
    }
    assert (adjust.json()["kind"], adjust.json()["amount"], adjust.json()["balance_after"]) == (
        "adjustment",
        -2.25,
        4.25,
    )
    async with gateway.pool.acquire() as conn:
        balance, total = await conn.fetchrow(
            """SELECT w.balance, (SELECT sum(amount) FROM ledger_entries l WHERE l.tenant_id = w.tenant_id)
               FROM wallets w WHERE w.tenant_id = $1""",
            UUID(tenant_id),
        )
    assert balance == total == 4_250


async def test_adjustment_below_held_credits_is_refused_with_409(gateway: Gateway) -> None:
    tenant_id = (await _new_tenant(gateway, credits=5))["tenant"]["id"]
    async with gateway.pool.acquire() as conn:
        # As if a running job held 4 credits.
        await conn.execute("UPDATE wallets SET held = 4000 WHERE tenant_id = $1", UUID(tenant_id))
    url, headers = f"/v1/admin/tenants/{tenant_id}/credits", bearer(gateway.operator_key)
    refused = await gateway.client.post(
        url, headers=headers, json={"amount": -1.001, "reason": "chargeback", "kind": "adjustment"}
    )
    assert refused.status_code == 409
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["type"].endswith("/conflict")
    allowed = await gateway.client.post(
        url, headers=headers, json={"amount": -1, "reason": "chargeback", "kind": "adjustment"}
    )
    assert allowed.status_code == 201
    tenant = (await gateway.client.get(f"/v1/admin/tenants/{tenant_id}", headers=headers)).json()
    assert (tenant["balance"], tenant["held"], tenant["available"]) == (4.0, 4.0, 0.0)


async def test_invalid_credit_changes_name_the_field(gateway: Gateway) -> None:
    tenant_id = (await _new_tenant(gateway, credits=5))["tenant"]["id"]
    url, headers = f"/v1/admin/tenants/{tenant_id}/credits", bearer(gateway.operator_key)
    cases = [
        ({"amount": 1, "reason": ""}, "reason"),
        ({"amount": 1, "reason": "   "}, "reason"),
        ({"amount": 1}, ""),
        ({"amount": -1, "reason": "x"}, "amount"),
        ({"amount": 0, "reason": "x", "kind": "adjustment"}, "amount"),
        ({"amount": 1.0001, "reason": "x"}, "amount"),
        ({"amount": "1", "reason": "x"}, "amount"),
        ({"amount": 1, "reason": "x", "kind": "charge"}, "kind"),
    ]
    for body, field in cases:
        response = await gateway.client.post(url, headers=headers, json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["errors"][0]["field"] == field, (body, response.text)
    async with gateway.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM ledger_entries WHERE tenant_id = $1", UUID(tenant_id)) == 1


async def test_invalid_tenant_requests_are_refused(gateway: Gateway) -> None:
    headers = bearer(gateway.operator_key)
    for body in (
        {"name": ""},
        {"name": "x", "credits": -1},
        {"name": "x", "credits": 0.0001},
        {"name": "x", "max_concurrent_jobs": 0},
    ):
        response = await gateway.client.post("/v1/admin/tenants", headers=headers, json=body)
        assert response.status_code == 422, (body, response.text)


async def test_operator_keys_are_created_listed_and_revoked_but_never_the_last(gateway: Gateway) -> None:
    admin = bearer(gateway.operator_key)
    created = await gateway.client.post("/v1/admin/operator-keys", headers=admin, json={"name": "billing team"})
    assert created.status_code == 201, created.text
    new_key = created.json()["key"]
    assert tokens.parse_kind(new_key) == "operator"
    assert (await gateway.client.get("/v1/admin/operator-keys", headers=bearer(new_key))).status_code == 200

    listing = await gateway.client.get("/v1/admin/operator-keys", headers=admin)
    assert new_key not in listing.text
    assert "billing team" in [k["name"] for k in listing.json()["data"]]

    revoked = await gateway.client.delete(f"/v1/admin/operator-keys/{created.json()['id']}", headers=admin)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked_at"] is not None

    async def refused() -> bool:
        return (await gateway.client.get("/v1/admin/operator-keys", headers=bearer(new_key))).status_code == 401

    # The authenticator caches lookups for 2 s; revocation must land within 5 s.
    await eventually(refused, timeout_s=5, what="the revoked operator key refused")

    last = await gateway.client.delete(f"/v1/admin/operator-keys/{await _operator_key_id(gateway)}", headers=admin)
    assert last.status_code == 409, last.text
    assert last.headers["content-type"].startswith("application/problem+json")
    missing = await gateway.client.delete(f"/v1/admin/operator-keys/{uuid4()}", headers=admin)
    assert missing.status_code == 404
    _, tenant_key = await gateway.tenant()
    assert (await gateway.client.get("/v1/admin/operator-keys", headers=bearer(tenant_key))).status_code == 403
