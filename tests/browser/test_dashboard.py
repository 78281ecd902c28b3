"""The dashboard in headless Chromium against a real server: what a tenant and an operator see and do."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any
from uuid import UUID

from playwright.async_api import Browser, Page

from gateway.db.audit import run_audit
from tests.browser.conftest import ARTIFACTS, LiveGateway, screenshot, sign_in_by_keyboard

T2I = {"prompt": "a lighthouse at dusk", "width": 512, "height": 512, "steps": 30}


def credits(millicredits: int) -> str:
    """As the dashboard prints credits."""
    return f"{millicredits / 1000:,.3f}"


async def ledger(gw: LiveGateway, tenant_id: UUID) -> dict[str, int]:
    """The ledger's own totals (millicredits): every entry, and the charges alone."""
    async with gw.pool.acquire() as conn:
        row = await conn.fetchrow(
            """SELECT coalesce(sum(amount), 0)::bigint AS balance,
                      coalesce(-sum(amount) FILTER (WHERE kind = 'charge'), 0)::bigint AS charged
               FROM ledger_entries WHERE tenant_id = $1""",
            tenant_id,
        )
    assert row is not None
    return {"balance": row["balance"], "charged": row["charged"]}


async def generate(gw: LiveGateway, key: str, **extra: Any) -> dict[str, Any]:
    async with gw.api(key) as api:
        response = await api.post("/v1/text-to-image", json={**T2I, **extra})
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    assert job["state"] == "succeeded"
    return job


async def text(page: Page, selector: str) -> str:
    return (await page.locator(selector).inner_text()).strip()


async def test_tenant_sees_balance_and_charts_that_match_the_ledger_and_downloads_the_csv(
    live_gateway: LiveGateway, browser: Browser
) -> None:
    gw = live_gateway
    tenant_id, key = await gw.tenant("Acme Images", credits=10)
    pair = await generate(gw, key, n=2)
    protected = await generate(gw, key, download_password="open sesame")
    gw.fakes["a2c"].fail_with_status(503)  # the next job falls back to Qolaba: a second engine in the charts
    fallback = await generate(gw, key)
    assert fallback["engine"] == "qolaba"
    expected = await ledger(gw, tenant_id)
    assert expected == {"balance": 10_000 - 1600, "charged": 1600}

    context = await browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = await context.new_page()
    await sign_in_by_keyboard(page, gw.base_url, key)
    assert page.url == f"{gw.base_url}/dashboard/overview"

    assert await text(page, "#available") == credits(expected["balance"])
    assert await text(page, "#balance") == credits(expected["balance"])
    assert await text(page, "#held") == "0.000"
    assert await text(page, "#credits-chart .chart-total") == credits(expected["charged"])
    assert await text(page, "#images-chart .chart-total") == "4"
    legend = await text(page, "#credits-chart .legend")
    assert "text-to-image · a2c" in legend
    assert "text-to-image · qolaba" in legend
    assert await page.locator("#credits-chart svg rect").count() >= 2
    assert await page.get_by_role("img", name="Credits by day").count() == 1

    # Thumbnails for the three unprotected images, all actually loaded; none for the protected job.
    thumbs = page.locator("table.jobs img")
    assert await thumbs.count() == 3
    await page.wait_for_function(
        "() => [...document.querySelectorAll('table.jobs img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    protected_row = page.locator("table.jobs tr", has=page.locator(f'a[href="/dashboard/jobs/{protected["id"]}"]'))
    assert "password-protected" in await protected_row.inner_text()
    assert await protected_row.locator("img").count() == 0
    await screenshot(page, "tenant-overview")

    async with page.expect_download() as download_info:
        await page.get_by_role("link", name="Download usage as CSV").click()
    download = await download_info.value
    assert download.suggested_filename.startswith("usage-")
    await download.save_as(ARTIFACTS / "usage.csv")
    rows = list(csv.DictReader(io.StringIO(Path(await download.path()).read_text())))
    assert {(r["operation"], r["engine"]) for r in rows} == {("text-to-image", "a2c"), ("text-to-image", "qolaba")}
    assert sum(round(float(r["credits"]) * 1000) for r in rows) == expected["charged"]
    assert sum(int(r["images"]) for r in rows) == 4

    job_link = page.locator(f'a[href="/dashboard/jobs/{pair["id"]}"]')
    await job_link.click()
    assert await page.locator("ul.results img").count() == 2
    await screenshot(page, "tenant-job")
    await context.close()
    async with gw.pool.acquire() as conn:
        assert await run_audit(conn) == {}


async def test_tenant_creates_a_key_sees_its_secret_once_and_revokes_it(
    live_gateway: LiveGateway, browser: Browser
) -> None:
    gw = live_gateway
    _, key = await gw.tenant("Acme Keys", credits=5)
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    await sign_in_by_keyboard(page, gw.base_url, key)
    await page.get_by_role("link", name="API keys").click()

    await page.get_by_label("Name").fill("ci")
    await page.get_by_label("Expires").select_option(label="in 30 days")
    assert not await page.get_by_label("keys:manage").is_checked()
    await page.get_by_role("button", name="Create key").click()
    secret = await page.get_by_label("Secret of key").input_value()
    assert secret.startswith("igw_")
    await screenshot(page, "keys-created")
    async with gw.api(secret) as api:
        assert (await api.get("/v1/balance")).status_code == 200
        assert (await api.get("/v1/keys")).status_code == 403  # keys:manage was not granted

    row = page.locator("table.keys tr", has=page.get_by_role("rowheader", name="ci"))
    assert await row.locator(".tag").inner_text() == "active"
    assert secret[-4:] in await row.inner_text()  # the hint, never the secret

    # Shown once: the same page loaded again holds no trace of the secret.
    await page.goto(f"{gw.base_url}/dashboard/keys")
    assert secret not in await page.content()
    assert await page.get_by_label("Secret of key").count() == 0

    await page.get_by_role("button", name="Revoke key ci").click()
    assert "revoked" in await text(page, "[role=status]")
    row = page.locator("table.keys tr", has=page.get_by_role("rowheader", name="ci"))
    assert await row.locator(".tag").inner_text() == "revoked"
    assert await row.get_by_role("button").count() == 0
    await screenshot(page, "keys-revoked")
    async with gw.api(secret) as api:
        assert (await api.get("/v1/balance")).status_code == 401
    await context.close()


async def test_operator_top_up_shows_in_the_tenant_balance(live_gateway: LiveGateway, browser: Browser) -> None:
    gw = live_gateway
    tenant_id, key = await gw.tenant("Globex", credits=5)
    tenant_context = await browser.new_context(viewport={"width": 1280, "height": 900})
    tenant_page = await tenant_context.new_page()
    await sign_in_by_keyboard(tenant_page, gw.base_url, key)
    assert await text(tenant_page, "#available") == "5.000"

    operator_context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await operator_context.new_page()
    await sign_in_by_keyboard(page, gw.base_url, gw.operator_key)
    assert page.url == f"{gw.base_url}/dashboard/admin"
    engines = await text(page, "table.engines")
    for name in ("a2c", "qolaba", "ait"):
        assert name in engines
    assert "closed" in engines
    assert await page.locator("table.prices tbody tr").count() == 3
    await screenshot(page, "operator-platform")

    await page.get_by_role("link", name="Globex").click()
    assert await text(page, "#available") == "5.000"
    await page.get_by_label("Amount (credits)").fill("25")
    await page.get_by_label("Kind").select_option("topup")
    await page.get_by_label("Reason (kept in the ledger)").fill("invoice 42")
    await page.get_by_role("button", name="Record").click()
    assert "Recorded as ledger entry" in await text(page, "[role=status]")
    assert await text(page, "#available") == "30.000"
    assert "invoice 42" in await text(page, "table.ledger tbody tr:first-child")
    await screenshot(page, "operator-tenant-topped-up")

    # A refused adjustment says why and changes nothing.
    await page.get_by_label("Amount (credits)").fill("-1000")
    await page.get_by_label("Kind").select_option("adjustment")
    await page.get_by_label("Reason (kept in the ledger)").fill("too much")
    await page.get_by_role("button", name="Record").click()
    assert "below" in await text(page, "[role=alert]")

    await tenant_page.reload()
    assert await text(tenant_page, "#available") == "30.000"
    assert (await ledger(gw, tenant_id))["balance"] == 30_000
    async with gw.pool.acquire() as conn:
        entry = await conn.fetchrow(
            "SELECT kind, amount, operator_key_id FROM ledger_entries WHERE tenant_id = $1 ORDER BY id DESC LIMIT 1",
            tenant_id,
        )
    assert entry is not None
    assert (entry["kind"], entry["amount"]) == ("topup", 25_000)
    assert entry["operator_key_id"] is not None
    await tenant_context.close()
    await operator_context.close()


async def test_the_dashboard_works_without_javascript_on_a_phone_by_keyboard(
    live_gateway: LiveGateway, browser: Browser
) -> None:
    gw = live_gateway
    _, key = await gw.tenant("Pocket", credits=3)
    await generate(gw, key)
    phone = await browser.new_context(
        viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True, java_script_enabled=False
    )
    page = await phone.new_page()
    await sign_in_by_keyboard(page, gw.base_url, key)
    assert await text(page, "#available") == "2.600"
    # Nothing wider than the screen: wide tables scroll inside their own box.
    for selector in ("header.top", "main", "#credits-chart"):
        box = await page.locator(selector).bounding_box()
        assert box is not None
        assert box["x"] >= 0
        assert box["x"] + box["width"] <= 390 + 0.5, selector
    await screenshot(page, "phone-overview")

    # The first Tab reaches the skip link; the key form works from the keyboard alone.
    await page.goto(f"{gw.base_url}/dashboard/keys")
    await page.keyboard.press("Tab")
    assert await page.locator(":focus").inner_text() == "Skip to content"
    await page.get_by_label("Name").focus()
    await page.keyboard.type("phone")
    await page.get_by_role("button", name="Create key").focus()
    await page.keyboard.press("Enter")
    await page.wait_for_load_state()
    assert (await page.get_by_label("Secret of key").input_value()).startswith("igw_")
    await screenshot(page, "phone-key-created")

    await page.get_by_role("button", name="Sign out").click()
    assert page.url == f"{gw.base_url}/dashboard/sign-in"
    await page.goto(f"{gw.base_url}/dashboard/overview")
    assert page.url == f"{gw.base_url}/dashboard/sign-in"
    await phone.close()
