"""The dashboard over plain HTTP: sessions, CSRF, tenant isolation, and numbers equal to the API's."""

from __future__ import annotations

import re
from typing import Any
from uuid import UUID

import pytest

from gateway.db.audit import run_audit
from tests.conftest import Gateway

T2I = {"prompt": "a lighthouse at dusk", "width": 512, "height": 512, "steps": 30}
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def gateway(gateway: Gateway) -> Gateway:
    """The usual test gateway, with redirects left for the test to see."""
    gateway.client.follow_redirects = False
    return gateway


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def csrf_of(html: str) -> str:
    match = _CSRF.search(html)
    assert match is not None, "the page has a form with a CSRF token"
    return match.group(1)


async def sign_in(gw: Gateway, key: str, headers: dict[str, str] | None = None) -> str:
    """Sign the test client in with `key`; returns the session's CSRF token."""
    gw.client.cookies.clear()
    form = await gw.client.get("/dashboard/sign-in")
    assert form.status_code == 200
    response = await gw.client.post(
        "/dashboard/sign-in", data={"csrf_token": csrf_of(form.text), "key": key}, headers=headers or {}
    )
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/dashboard"
    page = await gw.client.get("/dashboard/overview" if key.startswith("igw_") else "/dashboard/admin")
    return csrf_of(page.text)


async def generate(gw: Gateway, key: str, **extra: Any) -> dict[str, Any]:
    response = await gw.client.post("/v1/text-to-image", json={**T2I, **extra}, headers=auth(key))
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    assert job["state"] == "succeeded"
    return job


async def key_ids(gw: Gateway, tenant_id: UUID) -> list[UUID]:
    async with gw.pool.acquire() as conn:
        return [r["id"] for r in await conn.fetch("SELECT id FROM api_keys WHERE tenant_id = $1", tenant_id)]


async def test_sign_in_sets_a_strict_httponly_session_cookie_that_is_not_the_key(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=5)
    form = await gateway.client.get("/dashboard/sign-in")
    response = await gateway.client.post("/dashboard/sign-in", data={"csrf_token": csrf_of(form.text), "key": key})
    assert response.status_code == 303
    cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("gw_session="))
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "samesite", "path", "max-age"} <= attributes
    assert "samesite=strict" in cookie.lower()
    assert "path=/dashboard" in cookie.lower()
    assert "secure" not in attributes  # plain http here
    assert key not in cookie
    async with gateway.pool.acquire() as conn:
        stored = await conn.fetch("SELECT * FROM dashboard_sessions")
    assert len(stored) == 1
    assert key.encode() not in b"".join(bytes(str(dict(r)), "utf-8") for r in stored)
    assert response.headers["cache-control"] == "no-store"


async def test_behind_https_the_session_cookie_is_secure(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=5)
    # The form over plain http, so this http-only test client sends its (then non-Secure) token cookie back.
    form = await gateway.client.get("/dashboard/sign-in")
    response = await gateway.client.post(
        "/dashboard/sign-in",
        data={"csrf_token": csrf_of(form.text), "key": key},
        headers={"X-Forwarded-Proto": "https"},
    )
    cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("gw_session="))
    assert "secure" in {part.strip().lower() for part in cookie.split(";")}


async def test_a_wrong_key_does_not_sign_in(gateway: Gateway) -> None:
    form = await gateway.client.get("/dashboard/sign-in")
    response = await gateway.client.post(
        "/dashboard/sign-in", data={"csrf_token": csrf_of(form.text), "key": "igw_not-a-key"}
    )
    assert response.status_code == 401
    assert "unknown, expired or revoked" in response.text
    assert not any(c.startswith("gw_session=") for c in response.headers.get_list("set-cookie"))


async def test_the_sign_in_form_without_its_token_is_refused(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=5)
    gateway.client.cookies.clear()
    response = await gateway.client.post("/dashboard/sign-in", data={"key": key})
    assert response.status_code == 403
    assert not any(c.startswith("gw_session=") for c in response.headers.get_list("set-cookie"))


async def test_pages_without_a_session_go_to_sign_in(gateway: Gateway) -> None:
    for path in ("/dashboard", "/dashboard/overview", "/dashboard/keys", "/dashboard/admin", "/dashboard/usage.csv"):
        response = await gateway.client.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"] == "/dashboard/sign-in"
    # Dashboard routes take no API key: a key header is not a session.
    _, key = await gateway.tenant(credits=5)
    response = await gateway.client.get("/dashboard/overview", headers=auth(key))
    assert response.status_code == 303


async def test_form_posts_without_the_csrf_token_are_refused_and_change_nothing(gateway: Gateway) -> None:
    tenant_id, key = await gateway.tenant(credits=5)
    token = await sign_in(gateway, key)
    before = await key_ids(gateway, tenant_id)
    scopes = {"name": "sneaky", "scopes": "generate", "expires_in_days": ""}
    missing = await gateway.client.post("/dashboard/keys", data=scopes)
    wrong = await gateway.client.post("/dashboard/keys", data={**scopes, "csrf_token": token[::-1]})
    revoke = await gateway.client.post(f"/dashboard/keys/{before[0]}/revoke", data={})
    sign_out = await gateway.client.post("/dashboard/sign-out", data={})
    for response in (missing, wrong, revoke, sign_out):
        assert response.status_code == 403
        assert "security token" in response.text
    assert await key_ids(gateway, tenant_id) == before
    assert (await gateway.client.get("/v1/balance", headers=auth(key))).status_code == 200
    assert (await gateway.client.get("/dashboard/overview")).status_code == 200  # still signed in
    # The same form with the token goes through.
    created = await gateway.client.post("/dashboard/keys", data={**scopes, "csrf_token": token})
    assert created.status_code == 201
    assert len(await key_ids(gateway, tenant_id)) == len(before) + 1


async def test_an_operator_credit_form_without_the_token_is_refused(gateway: Gateway) -> None:
    tenant_id, key = await gateway.tenant(credits=5)
    await sign_in(gateway, gateway.operator_key)
    response = await gateway.client.post(
        f"/dashboard/admin/tenants/{tenant_id}/credits", data={"amount": "100", "kind": "topup", "reason": "free"}
    )
    assert response.status_code == 403
    balance = (await gateway.client.get("/v1/balance", headers=auth(key))).json()
    assert balance["balance"] == 5.0


async def test_another_tenants_job_file_and_key_urls_answer_404(gateway: Gateway) -> None:
    _, key_a = await gateway.tenant(credits=5)
    tenant_b, key_b = await gateway.tenant(credits=5)
    job_a = await generate(gateway, key_a)
    job_b = await generate(gateway, key_b)
    [key_of_b] = await key_ids(gateway, tenant_b)
    token = await sign_in(gateway, key_a)

    own_page = await gateway.client.get(f"/dashboard/jobs/{job_a['id']}")
    assert own_page.status_code == 200
    own_thumb = await gateway.client.get(f"/dashboard/thumbnails/{job_a['results'][0]['file_id']}")
    assert own_thumb.status_code == 200
    assert own_thumb.content.startswith(b"\x89PNG")

    assert (await gateway.client.get(f"/dashboard/jobs/{job_b['id']}")).status_code == 404
    assert (await gateway.client.get(f"/dashboard/thumbnails/{job_b['results'][0]['file_id']}")).status_code == 404
    for action in ("revoke", "rotate"):
        response = await gateway.client.post(
            f"/dashboard/keys/{key_of_b}/{action}", data={"csrf_token": token, "grace_period_s": "0"}
        )
        assert response.status_code == 404, action
    assert (await gateway.client.get("/v1/balance", headers=auth(key_b))).status_code == 200
    # A tenant has no operator pages, and an operator URL naming a tenant changes nothing.
    assert (await gateway.client.get("/dashboard/admin")).status_code == 404
    assert (await gateway.client.get(f"/dashboard/admin/tenants/{tenant_b}")).status_code == 404
    top_up = await gateway.client.post(
        f"/dashboard/admin/tenants/{tenant_b}/credits",
        data={"csrf_token": token, "amount": "100", "kind": "topup", "reason": "free"},
    )
    assert top_up.status_code == 404
    assert (await gateway.client.get("/v1/balance", headers=auth(key_b))).json()["balance"] == 4.6


async def test_password_protected_images_get_no_thumbnail(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=5)
    job = await generate(gateway, key, download_password="open sesame")
    await sign_in(gateway, key)
    overview = await gateway.client.get("/dashboard/overview")
    assert "password-protected" in overview.text
    assert f"/dashboard/thumbnails/{job['results'][0]['file_id']}" not in overview.text
    assert (await gateway.client.get(f"/dashboard/thumbnails/{job['results'][0]['file_id']}")).status_code == 404


async def test_revoking_the_key_through_the_api_ends_its_sessions(gateway: Gateway) -> None:
    _, admin_key = await gateway.tenant(credits=5)
    created = await gateway.client.post(
        "/v1/keys", json={"name": "browser", "scopes": ["usage:read", "jobs:read"]}, headers=auth(admin_key)
    )
    browser_key = created.json()["key"]
    await sign_in(gateway, browser_key)
    assert (await gateway.client.get("/dashboard/overview")).status_code == 200
    revoked = await gateway.client.delete(f"/v1/keys/{created.json()['id']}", headers=auth(admin_key))
    assert revoked.status_code == 200
    after = await gateway.client.get("/dashboard/overview")
    assert after.status_code == 303
    assert after.headers["location"] == "/dashboard/sign-in?ended=1"
    async with gateway.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM dashboard_sessions") == 0


async def test_an_expired_session_is_sent_back_to_sign_in(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=5)
    await sign_in(gateway, key)
    async with gateway.pool.acquire() as conn:
        await conn.execute(
            "UPDATE dashboard_sessions SET created_at = now() - interval '9 hours', expires_at = now() - interval '1 s'"
        )
    response = await gateway.client.get("/dashboard/overview")
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard/sign-in?ended=1"


async def test_sign_out_ends_the_session(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=5)
    token = await sign_in(gateway, key)
    cookie = gateway.client.cookies.get("gw_session")
    response = await gateway.client.post("/dashboard/sign-out", data={"csrf_token": token})
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard/sign-in"
    # Even a browser that kept the old cookie is signed out: the session is gone server-side.
    assert cookie
    gateway.client.cookies.set("gw_session", cookie, path="/dashboard")
    assert (await gateway.client.get("/dashboard/overview")).status_code == 303


async def test_the_page_and_the_csv_show_what_the_usage_and_balance_api_return(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    await generate(gateway, key, n=2)
    gateway.extra["a2c"].fail_with_status(503)
    await generate(gateway, key)
    await sign_in(gateway, key)
    overview = await gateway.client.get("/dashboard/overview")
    balance = (await gateway.client.get("/v1/balance", headers=auth(key))).json()
    assert f'<span id="available">{balance["available"]:,.3f}</span>' in overview.text
    assert f'<span id="balance">{balance["balance"]:,.3f}</span>' in overview.text
    assert "text-to-image · a2c" in overview.text
    assert "text-to-image · qolaba" in overview.text

    csv_export = await gateway.client.get("/dashboard/usage.csv?days=30")
    assert csv_export.status_code == 200
    assert csv_export.headers["content-type"].startswith("text/csv")
    assert "attachment" in csv_export.headers["content-disposition"]
    disposition = csv_export.headers["content-disposition"]
    start, end = re.findall(r"usage-(\d{4}-\d\d-\d\d)-(\d{4}-\d\d-\d\d)\.csv", disposition)[0]
    api_csv = await gateway.client.get(
        "/v1/usage",
        params={"start": start, "end": end, "group_by": ["day", "operation", "engine"]},
        headers={**auth(key), "Accept": "text/csv"},
    )
    assert csv_export.text == api_csv.text
    assert csv_export.text.count("\n") == 3  # header, a2c row, qolaba row
    async with gateway.pool.acquire() as conn:
        assert await run_audit(conn) == {}


async def test_dashboard_pages_carry_a_no_script_content_security_policy(gateway: Gateway) -> None:
    response = await gateway.client.get("/dashboard/sign-in")
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "script-src" not in policy  # so scripts fall back to 'none'
    assert "<script" not in response.text
    assert response.headers["x-frame-options"] == "DENY"


async def test_rotating_a_key_shows_the_new_secret_once_and_retires_the_old_one(gateway: Gateway) -> None:
    _, admin_key = await gateway.tenant(credits=5)
    created = await gateway.client.post(
        "/v1/keys", json={"name": "svc", "scopes": ["usage:read"]}, headers=auth(admin_key)
    )
    old = created.json()["key"]
    token = await sign_in(gateway, admin_key)
    response = await gateway.client.post(
        f"/dashboard/keys/{created.json()['id']}/rotate", data={"csrf_token": token, "grace_period_s": "0"}
    )
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    match = re.search(r'id="new-secret"[^>]*value="(igw_[^"]+)"', response.text)
    assert match is not None
    new = match.group(1)
    assert (await gateway.client.get("/v1/balance", headers=auth(old))).status_code == 401
    assert (await gateway.client.get("/v1/balance", headers=auth(new))).status_code == 200
    again = await gateway.client.get("/dashboard/keys")
    assert new not in again.text
    assert new[-4:] in again.text


async def test_the_operator_page_shows_an_engine_whose_credentials_the_vendor_refused(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    gateway.extra["a2c"].fail_with_status(401)
    await generate(gateway, key)  # a2c refuses our key; qolaba serves
    await sign_in(gateway, gateway.operator_key)
    page = (await gateway.client.get("/dashboard/admin")).text
    row = next(line for line in page.split("<tr>") if ">a2c<" in line)
    assert "credentials refused" in row
    assert "<time datetime=" in row
    other = next(line for line in page.split("<tr>") if ">qolaba<" in line)
    assert "credentials refused" not in other


async def test_the_job_page_shows_what_each_engine_was_sent(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=5)
    job = await generate(gateway, key, seed=4242, negative_prompt="fog")
    await sign_in(gateway, key)
    page = (await gateway.client.get(f"/dashboard/jobs/{job['id']}")).text
    row = next(line for line in page.split("<tr>") if f"<td>{job['engine']}</td>" in line)
    assert "seed=4242" in row
    assert "negative_prompt=fog" in row
