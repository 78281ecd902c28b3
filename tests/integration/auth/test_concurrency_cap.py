"""The per-tenant cap on unfinished jobs holds across replicas: it lives in PostgreSQL, not in a process."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from tests.conftest import Gateway
from tests.integration.auth.test_authentication_api import bearer


async def test_concurrent_jobs_cap_holds_across_two_app_instances(
    make_gateway: Callable[..., Awaitable[Gateway]],
) -> None:
    # No runner: admitted jobs stay queued, so each one keeps its slot for the whole test.
    first = await make_gateway(run_worker=False)
    second = await make_gateway(run_worker=False)
    _, key = await first.tenant(credits=100, max_concurrent_jobs=2)
    body = {"prompt": "a lighthouse", "width": 512, "height": 512, "async": True}

    async def submit(replica: Gateway) -> int:
        response = await replica.client.post("/v1/text-to-image", headers=bearer(key), json=body)
        if response.status_code == 429:
            assert response.json()["limit"] == "concurrent_jobs"
            assert "Retry-After" in response.headers
        return response.status_code

    statuses = await asyncio.gather(*(submit(first if i % 2 else second) for i in range(10)))
    assert sorted(statuses) == [202, 202] + [429] * 8

    jobs = (await first.client.get("/v1/jobs", headers=bearer(key))).json()["data"]
    assert len(jobs) == 2
    canceled = await second.client.post(f"/v1/jobs/{jobs[0]['id']}/cancel", headers=bearer(key))
    assert canceled.status_code == 200, canceled.text
    assert await submit(first) == 202
    assert await submit(second) == 429
