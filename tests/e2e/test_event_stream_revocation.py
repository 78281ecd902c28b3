"""An open event stream ends once the key it was opened with stops authenticating."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx

from gateway.auth import tokens
from tests.conftest import Gateway
from tests.e2e.test_jobs_events import T2I, Event, LiveServer, auth, live_api, sse_events

__all__ = ["live_api"]  # the fixture, imported so pytest finds it here


async def test_revoking_the_key_ends_its_open_event_streams(
    live_api: LiveServer, make_gateway: Callable[..., Awaitable[Gateway]]
) -> None:
    api = await make_gateway(run_worker=False)
    tenant_id, admin = await api.tenant(credits=10)
    watcher = await api.key(tenant_id, scopes=["generate", "jobs:read"])
    async with api.pool.acquire() as conn:
        watcher_id = await conn.fetchval(
            "SELECT key_id FROM api_key_secrets WHERE secret_hash = $1", tokens.hash_key(watcher)
        )
    events: list[Event] = []
    async with httpx.AsyncClient(base_url=live_api.base_url, timeout=30) as client:
        # No replica runs jobs: the job stays queued and its stream would stay open for good.
        response = await client.post("/v1/text-to-image", json={**T2I, "async": True}, headers=auth(watcher))
        assert response.status_code == 202
        job_id = response.json()["id"]
        async with (
            asyncio.timeout(20),
            client.stream("GET", f"/v1/jobs/{job_id}/events", headers=auth(watcher)) as stream,
        ):
            assert stream.status_code == 200
            async for event in sse_events(stream):
                events.append(event)
                if len(events) == 1:
                    revoked = await client.delete(f"/v1/keys/{watcher_id}", headers=auth(admin))
                    assert revoked.status_code == 200
    assert events[0].event == "status"
    assert not [e for e in events if e.event == "done"], "the stream ended because of the key, not the job"
