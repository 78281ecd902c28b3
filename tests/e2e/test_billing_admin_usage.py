"""Operators see usage across tenants, and the margin per engine against the cost of goods."""

from __future__ import annotations

import csv
import io
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest

from tests.conftest import Gateway
from tests.e2e.test_generation_billing import T2I, auth
from tests.integration.dashboard.test_dashboard_http import sign_in

COST_PER_A2C_CREDIT = 0.05
COST_PER_QOLABA_CREDIT = 0.1
COST_PER_GPU_SECOND = 0.02


@pytest.fixture
async def costed(make_gateway: Callable[..., Awaitable[Gateway]], fake_api2convert: Any, fake_qolaba: Any) -> Gateway:
    """A gateway whose engines carry unit costs, like a gateway.toml with cost_per_* set."""
    polling = {"poll_interval_s": 0.01, "max_poll_interval_s": 0.05, "timeout_s": 10}
    engines = {
        "a2c": {
            "kind": "api2convert",
            "base_url": fake_api2convert.base_url,
            "api_key_env": "A2C_KEY",
            "cost_per_vendor_credit": COST_PER_A2C_CREDIT,
            **polling,
        },
        "qolaba": {
            "kind": "qolaba",
            "base_url": fake_qolaba.base_url,
            "api_key_env": "QOLABA_KEY",
            "cost_per_vendor_credit": COST_PER_QOLABA_CREDIT,
            **polling,
        },
        # Configured for its unit cost only: the rollup rows below stand for its past work.
        "gpu": {
            "kind": "diffusion",
            "base_url": "http://127.0.0.1:9",
            "api_key_env": "GPU_SECRET",  # a remote GPU worker is refused without its shared secret
            "cost_per_gpu_second": COST_PER_GPU_SECOND,
        },
    }
    return await make_gateway(
        environ={"GPU_SECRET": "shared"}, engines=engines, routes={"text-to-image": ["a2c", "qolaba"]}
    )


async def admin_usage(gw: Gateway, query: str, **headers: str) -> Any:
    return await gw.client.get(f"/v1/admin/usage?{query}", headers={**auth(gw.operator_key), **headers})


async def engine_spend(gw: Gateway, engine: str) -> float:
    async with gw.pool.acquire() as conn:
        spent: float = await conn.fetchval("SELECT sum(vendor_credits) FROM jobs WHERE engine = $1", engine)
    return spent


async def two_tenants_of_usage(gw: Gateway) -> tuple[UUID, UUID]:
    """Tenant A: 3 images on a2c; tenant B: one on qolaba (a2c down) and one failed job; and a
    GPU day of tenant A's a week ago, written to the rollup as settlement would have."""
    tenant_a, key_a = await gw.tenant(credits=10)
    tenant_b, key_b = await gw.tenant(credits=10)
    assert (await gw.client.post("/v1/text-to-image", json={**T2I, "n": 2}, headers=auth(key_a))).status_code == 200
    assert (await gw.client.post("/v1/text-to-image", json=T2I, headers=auth(key_a))).status_code == 200
    gw.extra["a2c"].fail_with_status(503)
    assert (await gw.client.post("/v1/text-to-image", json=T2I, headers=auth(key_b))).json()["engine"] == "qolaba"
    gw.extra["qolaba"].fail_with_status(503)
    assert (await gw.client.post("/v1/text-to-image", json=T2I, headers=auth(key_b))).status_code == 503
    async with gw.pool.acquire() as conn:
        await conn.execute(
            """INSERT INTO usage_daily (tenant_id, day, operation, engine, api_key_id, jobs, images, charged,
                                        gpu_seconds)
               VALUES ($1, (now() AT TIME ZONE 'UTC')::date - 7, 'text-to-image', 'gpu', $2, 4, 4, 1600, 30.5)""",
            tenant_a,
            UUID(int=0),
        )
    return tenant_a, tenant_b


async def test_usage_across_tenants_groups_by_tenant_with_totals(costed: Gateway) -> None:
    tenant_a, tenant_b = await two_tenants_of_usage(costed)
    response = await admin_usage(costed, "group_by=tenant")
    assert response.status_code == 200, response.text
    body = response.json()
    rows = {row["tenant_id"]: row for row in body["data"]}
    assert set(rows) == {str(tenant_a), str(tenant_b)}
    assert (rows[str(tenant_a)]["jobs"], rows[str(tenant_a)]["images"], rows[str(tenant_a)]["credits"]) == (6, 7, 2.8)
    assert (rows[str(tenant_b)]["jobs"], rows[str(tenant_b)]["images"]) == (2, 1)
    assert (rows[str(tenant_b)]["failed_images"], rows[str(tenant_b)]["credits"]) == (1, 0.4)
    assert (body["total_images"], body["total_credits"]) == (8, 3.2)
    assert body["unit_costs"]["gpu"] == {"per_vendor_credit": 0.0, "per_gpu_second": COST_PER_GPU_SECOND}

    only_b = (await admin_usage(costed, f"group_by=day&tenant_id={tenant_b}")).json()
    assert [(r["day"], r["images"]) for r in only_b["data"]] == [(datetime.now(UTC).date().isoformat(), 1)]


async def test_margin_per_engine_is_charged_credits_minus_the_cost_of_goods(costed: Gateway) -> None:
    await two_tenants_of_usage(costed)
    body = (await admin_usage(costed, "group_by=engine")).json()
    rows = {row["engine"]: row for row in body["data"]}
    assert set(rows) == {"a2c", "qolaba", "gpu", "none"}  # "none": jobs that no engine served

    a2c_credits = await engine_spend(costed, "a2c")
    assert a2c_credits > 0
    assert rows["a2c"]["vendor_credits"] == a2c_credits
    assert rows["a2c"]["cost"] == round(a2c_credits * COST_PER_A2C_CREDIT, 3)
    assert rows["a2c"]["margin"] == round(1.2 - rows["a2c"]["cost"], 3)
    qolaba_credits = await engine_spend(costed, "qolaba")
    assert rows["qolaba"]["cost"] == round(qolaba_credits * COST_PER_QOLABA_CREDIT, 3)
    assert (rows["gpu"]["gpu_seconds"], rows["gpu"]["cost"], rows["gpu"]["margin"]) == (30.5, 0.61, 0.99)
    assert (rows["none"]["credits"], rows["none"]["cost"], rows["none"]["failed_images"]) == (0.0, 0.0, 1)
    assert body["total_cost"] == round(sum(r["cost"] for r in rows.values()), 3)
    assert body["total_margin"] == round(body["total_credits"] - body["total_cost"], 3)


async def test_a_date_range_selects_days_and_csv_is_served_on_request(costed: Gateway) -> None:
    tenant_a, _ = await two_tenants_of_usage(costed)
    week_ago = datetime.now(UTC).date() - timedelta(days=7)
    past = (await admin_usage(costed, f"start={week_ago}&end={week_ago}&group_by=tenant&group_by=engine")).json()
    assert [(r["tenant_id"], r["engine"], r["credits"]) for r in past["data"]] == [(str(tenant_a), "gpu", 1.6)]
    assert past["group_by"] == ["tenant", "engine"]

    response = await admin_usage(costed, "group_by=engine", accept="text/csv")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(response.text)))
    assert list(table[0]) == [
        "engine", "jobs", "images", "failed_images", "credits", "vendor_credits", "gpu_seconds", "cost", "margin"
    ]  # fmt: skip
    assert {r["engine"]: r["margin"] for r in table}["gpu"] == "0.990"


async def test_operator_usage_refuses_tenants_and_bad_ranges(costed: Gateway) -> None:
    _, key = await costed.tenant(credits=1)
    assert (await costed.client.get("/v1/admin/usage", headers=auth(key))).status_code == 403
    backwards = await admin_usage(costed, "start=2024-02-01&end=2024-01-01")
    assert backwards.status_code == 422
    assert backwards.json()["errors"][0]["field"] == "start"
    assert (await admin_usage(costed, "group_by=colour")).status_code in (400, 422)


async def test_the_dashboard_margin_table_shows_what_the_usage_api_reports(costed: Gateway) -> None:
    await two_tenants_of_usage(costed)
    api = {r["engine"]: r for r in (await admin_usage(costed, "group_by=engine")).json()["data"]}
    costed.client.follow_redirects = False  # sign_in checks the redirect itself
    await sign_in(costed, costed.operator_key)
    page = (await costed.client.get("/dashboard/admin")).text
    table = page[page.index('<table class="margins"') : page.index("</table>", page.index('class="margins"'))]
    for engine in ("a2c", "qolaba"):
        row = table[table.index(f'<th scope="row">{engine}</th>') :].split("</tr>", 1)[0]
        cells = [c.split("<", 1)[0] for c in row.split('<td class="num">')[1:]]
        # Jobs, images, failed, charged, cost, margin: the same figures as /v1/admin/usage.
        expected = [api[engine]["jobs"], api[engine]["images"], api[engine]["failed_images"]]
        assert [int(c) for c in cells[:3]] == expected
        assert [float(c) for c in cells[3:6]] == [api[engine]["credits"], api[engine]["cost"], api[engine]["margin"]]
