"""The tenant's ledger, usage and job listings page correctly on the queries the plan test checks."""

from __future__ import annotations

import csv
import io
from typing import Any

from tests.conftest import Gateway
from tests.e2e.test_generation_billing import T2I, auth


async def pages(gw: Gateway, key: str, path: str) -> list[list[dict[str, Any]]]:
    """Every page of a cursor listing, following next_cursor."""
    found: list[list[dict[str, Any]]] = []
    url = path
    while True:
        body = (await gw.client.get(url, headers=auth(key))).json()
        found.append(body["data"])
        if body["next_cursor"] is None:
            return found
        url = f"{path}&cursor={body['next_cursor']}"


async def three_jobs_one_failed(gw: Gateway, key: str) -> None:
    for _ in range(2):
        assert (await gw.client.post("/v1/text-to-image", json=T2I, headers=auth(key))).status_code == 200
    gw.extra["a2c"].fail_with_status(500)
    gw.extra["qolaba"].fail_with_status(500)
    assert (await gw.client.post("/v1/text-to-image", json=T2I, headers=auth(key))).status_code == 503
    gw.extra["a2c"].reset()
    gw.extra["qolaba"].reset()


async def test_the_ledger_pages_newest_first_through_every_entry(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    _, other = await gateway.tenant(credits=5)
    await three_jobs_one_failed(gateway, key)
    found = await pages(gateway, key, "/v1/ledger?limit=2")
    assert [len(p) for p in found] == [2, 1]
    entries = [e for p in found for e in p]
    assert [(e["kind"], e["amount"], e["balance_after"]) for e in entries] == [
        ("charge", -0.4, 9.2),
        ("charge", -0.4, 9.6),
        ("topup", 10.0, 10.0),
    ]
    assert [e["kind"] for e in (await gateway.client.get("/v1/ledger", headers=auth(other))).json()["data"]] == [
        "topup"
    ]


async def test_job_listing_pages_and_filters_by_state(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    await three_jobs_one_failed(gateway, key)
    found = await pages(gateway, key, "/v1/jobs?limit=2")
    assert [len(p) for p in found] == [2, 1]
    states = [j["state"] for p in found for j in p]
    assert states == ["failed", "succeeded", "succeeded"]
    succeeded = await pages(gateway, key, "/v1/jobs?state=succeeded&limit=1")
    assert [[j["state"] for j in p] for p in succeeded] == [["succeeded"], ["succeeded"]]
    assert (await gateway.client.get("/v1/jobs?state=canceled", headers=auth(key))).json()["data"] == []


async def test_usage_groups_the_tenants_own_jobs_in_json_and_csv(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    _, other = await gateway.tenant(credits=10)
    await three_jobs_one_failed(gateway, key)
    assert (await gateway.client.post("/v1/text-to-image", json=T2I, headers=auth(other))).status_code == 200
    body = (await gateway.client.get("/v1/usage?group_by=engine", headers=auth(key))).json()
    rows = {r["engine"]: r for r in body["data"]}
    assert (rows["a2c"]["jobs"], rows["a2c"]["images"], rows["a2c"]["credits"]) == (2, 2, 0.8)
    assert (rows["none"]["jobs"], rows["none"]["failed_images"], rows["none"]["credits"]) == (1, 1, 0.0)
    assert (body["total_images"], body["total_credits"]) == (2, 0.8)
    response = await gateway.client.get("/v1/usage?group_by=engine", headers={**auth(key), "accept": "text/csv"})
    table = list(csv.DictReader(io.StringIO(response.text)))
    assert {r["engine"]: r["credits"] for r in table} == {"a2c": "0.800", "none": "0.000"}
