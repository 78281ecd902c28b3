"""Every cursor listing pages with the one cursor format, and refuses a forged cursor as 422
problem+json naming `cursor` (an id past its column once answered 500)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from gateway.api.cursors import INT32_MAX, INT64_MAX
from gateway.db import billing as bq
from tests.conftest import Gateway
from tests.integration.auth.test_authentication_api import bearer


async def _all_pages(gateway: Gateway, path: str, key: str) -> list[Any]:
    seen: list[Any] = []
    params: dict[str, Any] = {"limit": 2}
    while True:
        response = await gateway.client.get(path, params=params, headers=bearer(key))
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["data"]) <= 2
        seen.extend(row["id"] for row in page["data"])
        if page["next_cursor"] is None:
            return seen
        params["cursor"] = page["next_cursor"]


async def test_jobs_and_ledger_page_through_every_row_once(make_gateway: Callable[..., Awaitable[Gateway]]) -> None:
    gateway = await make_gateway(run_worker=False)  # the jobs stay queued: only admission runs
    tenant_id, key = await gateway.tenant(credits=100)
    body = {"prompt": "a lighthouse", "width": 512, "height": 512, "async": True}
    for _ in range(5):
        made = await gateway.client.post("/v1/text-to-image", headers=bearer(key), json=body)
        assert made.status_code == 202, made.text
    async with gateway.pool.acquire() as conn:
        for _ in range(2):
            await bq.credit(conn, tenant_id=tenant_id, kind="topup", amount=1000, reason="t", operator_key_id=None)

    jobs = await _all_pages(gateway, "/v1/jobs", key)
    assert len(jobs) == len(set(jobs)) == 5
    ledger = await _all_pages(gateway, "/v1/ledger", key)
    assert len(ledger) == len(set(ledger)) >= 3
    assert ledger == sorted(ledger, reverse=True)

    # A cursor of the format before this one (the bare id) still continues the ledger.
    rest = await gateway.client.get("/v1/ledger", params={"cursor": str(ledger[0])}, headers=bearer(key))
    assert [e["id"] for e in rest.json()["data"]] == ledger[1:]


@pytest.mark.parametrize(
    ("path", "cursor"),
    [
        ("/v1/jobs", "nope"),
        ("/v1/jobs", "17"),
        ("/v1/ledger", str(INT64_MAX + 1)),
        ("/v1/ledger", "0"),
        ("/v1/admin/tenants", "bm90IGEgY3Vyc29y"),
        ("/v1/admin/prices/versions", str(INT32_MAX + 1)),
        ("/v1/admin/prices/versions", "-3"),
    ],
)
async def test_a_forged_cursor_is_a_422_naming_the_cursor(gateway: Gateway, path: str, cursor: str) -> None:
    _, key = await gateway.tenant()
    headers = bearer(gateway.operator_key if "/admin/" in path else key)
    response = await gateway.client.get(path, params={"cursor": cursor}, headers=headers)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert [e["field"] for e in response.json()["errors"]] == ["cursor"]
