"""A key's monthly credit cap is enforced at admission, counting what it spent and what it holds."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from tests.conftest import Gateway
from tests.e2e.test_generation_billing import T2I, audit_clean, auth, balance


async def capped_key(gw: Gateway, owner_key: str, cap: float) -> str:
    response = await gw.client.post(
        "/v1/keys",
        json={"name": "capped", "scopes": ["generate", "jobs:read", "usage:read"], "monthly_cap": cap},
        headers=auth(owner_key),
    )
    assert response.status_code == 201, response.text
    key: str = response.json()["key"]
    return key


async def generate(gw: Gateway, key: str, **extra: Any) -> Any:
    return await gw.client.post("/v1/text-to-image", json={**T2I, **extra}, headers=auth(key))


async def test_a_request_over_the_keys_monthly_cap_is_402_naming_the_cap(gateway: Gateway) -> None:
    _, owner = await gateway.tenant(credits=10)
    key = await capped_key(gateway, owner, 1.0)
    for _ in range(2):
        assert (await generate(gateway, key)).json()["charged"] == 0.4
    refused = await generate(gateway, key)
    assert refused.status_code == 402
    assert refused.headers["content-type"].startswith("application/problem+json")
    problem = refused.json()
    assert "monthly credit cap" in problem["detail"]
    assert (problem["monthly_cap"], problem["spent_this_month"], problem["price"]) == (1.0, 0.8, 0.4)
    assert problem["shortfall"] == 0.2
    # The wallet itself is fine: the tenant's other keys go on.
    assert (await generate(gateway, owner)).status_code == 200
    assert (await balance(gateway, owner))["balance"] == 8.8
    await audit_clean(gateway)


async def test_a_batch_that_would_cross_the_cap_is_refused_whole(gateway: Gateway) -> None:
    _, owner = await gateway.tenant(credits=10)
    key = await capped_key(gateway, owner, 1.0)
    refused = await generate(gateway, key, n=3)
    assert refused.status_code == 402
    assert refused.json()["price"] == 1.2
    assert (await generate(gateway, key, n=2)).json()["charged"] == 0.8


async def test_held_credits_count_against_the_cap_and_failed_jobs_do_not(
    make_gateway: Callable[..., Awaitable[Gateway]],
) -> None:
    gateway = await make_gateway(run_worker=False)  # async jobs stay queued, their credits held
    _, owner = await gateway.tenant(credits=10)
    key = await capped_key(gateway, owner, 0.8)
    gateway.extra["a2c"].fail_with_status(500)
    gateway.extra["qolaba"].fail_with_status(500)
    assert (await generate(gateway, key, n=2)).status_code == 503  # released: costs nothing
    gateway.extra["a2c"].reset()
    gateway.extra["qolaba"].reset()
    queued = await generate(gateway, key, n=2, **{"async": True})
    assert queued.status_code == 202
    refused = await generate(gateway, key)
    assert refused.status_code == 402
    assert refused.json()["spent_this_month"] == 0.8
    await audit_clean(gateway)
