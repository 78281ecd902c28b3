"""Async jobs end to end: submit, poll, cancel, and follow a job's Server-Sent Events."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import uvicorn

from gateway.app import create_app
from gateway.db.audit import run_audit
from tests.conftest import Gateway, gateway_settings, vendor_urls
from tests.fakes.images import png
from tests.waiting import eventually, eventually_blocking

T2I = {"prompt": "a lighthouse at dusk", "width": 512, "height": 512, "steps": 30}
IMAGE = base64.b64encode(png(512, 512)).decode()
MASK = base64.b64encode(png(512, 512, (255, 255, 255))).decode()
BODIES: dict[str, dict[str, Any]] = {
    "text-to-image": T2I,
    "image-to-image": {**T2I, "image": IMAGE, "strength": 0.5},
    "inpaint": {**T2I, "image": IMAGE, "mask": MASK},
}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def audit_clean(gw: Gateway) -> None:
    async with gw.pool.acquire() as conn:
        assert await run_audit(conn) == {}


async def balance(gw: Gateway, key: str) -> dict[str, Any]:
    response = await gw.client.get("/v1/balance", headers=auth(key))
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


async def wait_for_state(gw: Gateway, key: str, location: str, states: set[str], timeout_s: float = 20) -> Any:
    """Poll the job until it is in one of `states`."""

    async def in_state() -> Any:
        job = (await gw.client.get(location, headers=auth(key))).json()
        return job if job["state"] in states else None

    return await eventually(in_state, timeout_s=timeout_s, what=f"the job {'/'.join(sorted(states))}")


# -- async operations ----------------------------------------------------------------------


@pytest.mark.parametrize("operation", ["text-to-image", "image-to-image", "inpaint"])
@pytest.mark.parametrize("how", ["prefer-header", "async-field"])
async def test_each_operation_answers_202_with_location_and_finishes_in_the_background(
    gateway: Gateway, operation: str, how: str
) -> None:
    _, key = await gateway.tenant(credits=10)
    body, headers = dict(BODIES[operation]), auth(key)
    if how == "prefer-header":
        headers["Prefer"] = "respond-async"
    else:
        body["async"] = True
    response = await gateway.client.post(f"/v1/{operation}", json=body, headers=headers)
    assert response.status_code == 202, response.text
    location = response.headers["location"]
    assert location == f"/v1/jobs/{response.json()['id']}"
    assert response.json()["state"] in ("queued", "running")
    job = await wait_for_state(gateway, key, location, {"succeeded", "failed", "canceled"})
    assert job["state"] == "succeeded", job
    assert job["operation"] == operation
    assert job["charged"] == 0.4
    assert (await gateway.client.get(job["results"][0]["url"])).status_code == 200
    assert await balance(gateway, key) == {"balance": 9.6, "held": 0.0, "available": 9.6, "active_jobs": 0}
    await audit_clean(gateway)


# -- cancel --------------------------------------------------------------------------------


async def test_canceling_a_queued_job_releases_its_reservation(
    make_gateway: Callable[..., Awaitable[Gateway]],
) -> None:
    gw = await make_gateway(run_worker=False)  # no runner anywhere: the job stays queued
    _, key = await gw.tenant(credits=10)
    _, other = await gw.tenant(credits=10)
    response = await gw.client.post("/v1/text-to-image", json={**T2I, "n": 2, "async": True}, headers=auth(key))
    assert response.status_code == 202
    job_id = response.json()["id"]
    assert await balance(gw, key) == {"balance": 10.0, "held": 0.8, "available": 9.2, "active_jobs": 1}

    assert (await gw.client.post(f"/v1/jobs/{job_id}/cancel", headers=auth(other))).status_code == 404
    canceled = await gw.client.post(f"/v1/jobs/{job_id}/cancel", headers=auth(key))
    assert canceled.status_code == 200
    job = canceled.json()
    assert job["state"] == "canceled"
    assert job["charged"] == 0.0
    assert [r["status"] for r in job["results"]] == ["failed", "failed"]
    assert await balance(gw, key) == {"balance": 10.0, "held": 0.0, "available": 10.0, "active_jobs": 0}

    again = await gw.client.post(f"/v1/jobs/{job_id}/cancel", headers=auth(key))
    assert again.status_code == 200
    assert again.json()["state"] == "canceled"
    async with gw.pool.acquire() as conn:
        ledger = await conn.fetchval("SELECT count(*) FROM ledger_entries WHERE job_id = $1", job["id"])
    assert ledger == 0
    await audit_clean(gw)


async def test_canceling_a_running_job_stops_its_engine_and_charges_nothing(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    a2c = gateway.extra["a2c"]
    a2c.slow_job(100_000)  # the vendor never finishes on its own
    response = await gateway.client.post("/v1/text-to-image", json={**T2I, "async": True}, headers=auth(key))
    location = response.headers["location"]
    await wait_for_state(gateway, key, location, {"running"})
    await eventually(lambda: a2c.jobs, timeout_s=10, what="the vendor having the job (the engine call under way)")

    started = time.monotonic()
    assert (await gateway.client.post(f"{location}/cancel", headers=auth(key))).status_code == 200
    job = await wait_for_state(gateway, key, location, {"succeeded", "failed", "canceled"}, timeout_s=10)
    assert job["state"] == "canceled", job
    assert time.monotonic() - started < 5, "the runner should stop within about a second"
    assert job["charged"] == 0.0
    assert job["error"]["title"] == "Canceled"
    assert await balance(gateway, key) == {"balance": 10.0, "held": 0.0, "available": 10.0, "active_jobs": 0}
    vendor_job = next(iter(a2c.jobs.values()))
    await eventually(lambda: vendor_job.status == "canceled", timeout_s=5, what="the engine canceling the vendor's job")
    await audit_clean(gateway)


# -- Server-Sent Events --------------------------------------------------------------------


@dataclass
class Event:
    event: str | None = None
    data: str = ""
    id: str | None = None
    comments: list[str] = field(default_factory=list)


async def sse_events(response: httpx.Response) -> AsyncIterator[Event]:
    """Parse a text/event-stream as the HTML spec says (enough of it for our events)."""
    current = Event()
    async for line in response.aiter_lines():
        if line == "":
            if current.event or current.data or current.comments:
                yield current
            current = Event()
        elif line.startswith(":"):
            current.comments.append(line[1:].strip())
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                current.event = value
            elif name == "data":
                current.data = f"{current.data}\n{value}" if current.data else value
            elif name == "id":
                current.id = value


class LiveServer:
    """The app behind a real socket (uvicorn in a thread, lifespan on), so a stream can be read as it arrives."""

    def __init__(self, app: Any) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", ws="none")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="live-gateway", daemon=True)
        self.base_url = ""

    def start(self) -> None:
        self._thread.start()
        eventually_blocking(
            lambda: self._server.started or not self._thread.is_alive(), timeout_s=30, what="the live gateway"
        )
        if not self._server.started:
            raise RuntimeError("live gateway did not start")
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)


@pytest.fixture
def live_api(
    database_url: str, data_dir: Path, fake_api2convert: Any, fake_qolaba: Any, fake_aithriving: Any
) -> Iterator[LiveServer]:
    """An API replica without a job runner, on a real port, with a short keep-alive."""
    vendors = vendor_urls(fake_api2convert, fake_qolaba, fake_aithriving)
    settings = gateway_settings(database_url, data_dir, vendors, run_worker=False, sse_keepalive_s=0.2)
    server = LiveServer(create_app(settings))
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_event_stream_follows_a_job_from_queued_to_succeeded_across_replicas(
    live_api: LiveServer, make_gateway: Callable[..., Awaitable[Gateway]]
) -> None:
    """The stream is served by a replica that runs no jobs; another replica's runner does the work,
    and the stream hears every change through the database."""
    api = await make_gateway(run_worker=False)
    _, key = await api.tenant(credits=10)
    api.extra["a2c"].slow_job(4)
    events: list[Event] = []
    async with httpx.AsyncClient(base_url=live_api.base_url, headers=auth(key), timeout=30) as client:
        response = await client.post("/v1/text-to-image", json={**T2I, "async": True})
        assert response.status_code == 202
        job_id = response.json()["id"]
        async with asyncio.timeout(30), client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            runner: Gateway | None = None
            async for event in sse_events(stream):
                events.append(event)
                if runner is None and any(e.comments for e in events):
                    # Queued and idle (a keep-alive came): now start a replica that runs jobs.
                    runner = await make_gateway()
    statuses = [msgspec.json.decode(e.data) for e in events if e.event == "status"]
    assert statuses[0]["state"] == "queued"
    states = [s["state"] for s in statuses]
    assert states == sorted(states, key=["queued", "running", "succeeded"].index), states
    assert {"queued", "running", "succeeded"} <= set(states)
    progress = [s["progress"] for s in statuses]
    assert progress == sorted(progress)
    assert progress[-1] == 1.0
    assert len(statuses) == len({msgspec.json.encode(s) for s in statuses}), "an event per change, no repeats"
    assert "keep-alive" in [c for e in events for c in e.comments]
    done = [e for e in events if e.event == "done"]
    assert len(done) == 1
    assert events[-1] is done[0], "the stream ends with the done event"
    final = msgspec.json.decode(done[0].data)
    assert final["id"] == job_id
    assert final["state"] == "succeeded"
    assert final["charged"] == 0.4
    assert final["results"][0]["url"].startswith("/v1/files/")
    await audit_clean(api)


async def test_event_stream_of_a_finished_job_sends_its_status_and_done_at_once(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    job = (await gateway.client.post("/v1/text-to-image", json=T2I, headers=auth(key))).json()
    response = await gateway.client.get(f"/v1/jobs/{job['id']}/events", headers=auth(key))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in response.text.replace("\r\n", "\n").split("\n\n") if b]
    assert [line for line in blocks[0].splitlines() if line.startswith("event:")] == ["event: status"]
    assert '"state":"succeeded"' in blocks[0]
    assert blocks[1].startswith("id: 2\nevent: done\n")
    assert len(blocks) == 2
    await audit_clean(gateway)


async def test_event_stream_needs_jobs_read_and_hides_other_tenants_jobs(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    _, other = await gateway.tenant(credits=10)
    _, no_read = await gateway.tenant(credits=10, scopes=["generate"])
    job = (await gateway.client.post("/v1/text-to-image", json=T2I, headers=auth(key))).json()
    hidden = await gateway.client.get(f"/v1/jobs/{job['id']}/events", headers=auth(other))
    assert hidden.status_code == 404
    assert hidden.headers["content-type"].startswith("application/problem+json")
    assert (await gateway.client.get(f"/v1/jobs/{job['id']}/events", headers=auth(no_read))).status_code == 403
    assert (await gateway.client.get(f"/v1/jobs/{job['id']}/events")).status_code == 401
