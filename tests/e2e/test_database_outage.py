"""A database that goes away and comes back: requests caught by the outage get 503 problem+json
with Retry-After, /readyz is 503 until the database answers again and 200 after, the gateway
recovers by itself, and a request that got an error is charged nothing (the ledger audit holds).

The test owns its PostgreSQL (an embedded server of its own), so it can stop it as a crash would
(`pg_ctl stop -m immediate`) and start it again, without touching the session's shared server.
"""

from __future__ import annotations

import asyncio
import shlex
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from gateway.app import create_app
from gateway.db.embedded import EmbeddedPostgres, _import_embedded, start_embedded
from gateway.db.migrations import apply_migrations
from tests.conftest import Gateway, gateway_settings, vendor_urls
from tests.e2e.test_generation_billing import T2I, audit_clean, auth, balance
from tests.waiting import eventually


class Server:
    """The test's own PostgreSQL: crash it, start it again with the options it had."""

    def __init__(self, embedded: EmbeddedPostgres) -> None:
        self.embedded = embedded
        opts = shlex.split((embedded.pgdata / "postmaster.opts").read_text())[1:]
        while "-D" in opts:  # pg_ctl passes the data folder itself
            at = opts.index("-D")
            del opts[at : at + 2]
        self._options = " ".join(shlex.quote(o) if o else '""' for o in opts)

    def _pg_ctl(self, *args: str) -> None:
        module = _import_embedded()
        user = self.embedded._server.system_user
        module.pg_ctl(["-w", *args], pgdata=self.embedded.pgdata, user=user, timeout=30)

    def crash(self) -> None:
        self._pg_ctl("-m", "immediate", "stop")

    def start(self) -> None:
        self._pg_ctl("-o", self._options, "start")


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[Server]:
    embedded = start_embedded(tmp_path / "outage")
    server = Server(embedded)
    try:
        yield server
    finally:
        embedded.stop()


@pytest.fixture
async def outage_gateway(
    own_server: Server, data_dir: Path, fake_api2convert: Any, fake_qolaba: Any, fake_aithriving: Any
) -> AsyncIterator[Gateway]:
    dsn = own_server.embedded.uri
    conn = await asyncpg.connect(dsn)
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()
    vendors = vendor_urls(fake_api2convert, fake_qolaba, fake_aithriving)
    # key_cache_ttl_s=0: every request looks its key up, so the outage reaches authentication too.
    settings = gateway_settings(dsn, data_dir, vendors, db_pool_min=1, db_pool_max=4, key_cache_ttl_s=0.001)
    app = create_app(settings)
    client: AsyncTestClient[Litestar] = AsyncTestClient(app, raise_server_exceptions=False)
    pool = await asyncpg.create_pool(dsn, min_size=0, max_size=2)
    assert pool is not None
    async with client:
        yield Gateway(app=app, client=client, operator_key="", pool=pool, extra={"a2c": fake_api2convert})
    await pool.close()


async def _checkpoint(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def _ready(gw: Gateway, timeout_s: float = 30.0) -> None:
    async def ready() -> bool:
        return (await gw.client.get("/readyz")).status_code == 200

    await eventually(ready, timeout_s=timeout_s, what="the gateway ready again")


def _is_outage_answer(response: Any) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert int(response.headers["retry-after"]) >= 1
    assert response.json()["type"].endswith("/database-unavailable")


async def test_an_outage_answers_503_and_the_gateway_recovers_charging_only_what_succeeded(
    outage_gateway: Gateway, own_server: Server
) -> None:
    gw = outage_gateway
    _, key = await gw.tenant(credits=10)
    first = await gw.client.post("/v1/text-to-image", json=T2I, headers=auth(key))
    assert first.status_code == 200, first.text
    charged = first.json()["charged"]
    assert (await gw.client.get("/readyz")).status_code == 200

    await asyncio.to_thread(own_server.crash)
    await gw.pool.expire_connections()
    _is_outage_answer(await gw.client.get("/readyz"))
    _is_outage_answer(await gw.client.post("/v1/text-to-image", json=T2I, headers=auth(key)))
    _is_outage_answer(await gw.client.get("/v1/balance", headers=auth(key)))

    await asyncio.to_thread(own_server.start)
    await _ready(gw)
    again = await gw.client.post("/v1/text-to-image", json=T2I, headers=auth(key))
    assert again.status_code == 200, again.text
    charged += again.json()["charged"]
    assert (await balance(gw, key))["balance"] == pytest.approx(10 - charged)
    await audit_clean(gw)


async def test_a_request_whose_job_outlived_the_database_is_charged_nothing_and_can_be_retried(
    outage_gateway: Gateway, own_server: Server
) -> None:
    gw = outage_gateway
    fake = gw.extra["a2c"]
    tenant_id, key = await gw.tenant(credits=10)
    fake.hang(2.0, on="poll")  # the vendor job is still running when the database goes away

    def crash_while_the_vendor_works() -> None:
        # A thread: the test client holds this event loop for the whole request.
        deadline = time.monotonic() + 20
        while not any(call.path.startswith("/v2/jobs/") for call in fake.calls):
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)
        # A checkpoint first: the sync admission did not wait for its WAL flush, and this test is
        # about a job that survived the crash.
        asyncio.run(_checkpoint(own_server.embedded.uri))
        own_server.crash()
        crashed.set()

    crashed = threading.Event()
    crasher = threading.Thread(target=crash_while_the_vendor_works)
    crasher.start()
    headers = {**auth(key), "Idempotency-Key": "outage-retry-1"}
    response = await gw.client.post("/v1/text-to-image", json=T2I, headers=headers)
    crasher.join()
    assert crashed.is_set(), "the job never reached the vendor"
    _is_outage_answer(response)
    fake.reset()

    await asyncio.to_thread(own_server.start)
    await gw.pool.expire_connections()
    await _ready(gw)

    # The job the 503 left behind is failed, free, once the database answers again.
    async def settled() -> list[Any] | None:
        async with gw.pool.acquire() as conn:
            jobs = await conn.fetch("SELECT state, charged FROM jobs WHERE tenant_id = $1", tenant_id)
        return jobs if jobs and all(job["state"] not in ("queued", "running") for job in jobs) else None

    jobs = await eventually(settled, timeout_s=20, what="the job settled")
    assert [(job["state"], job["charged"]) for job in jobs] == [("failed", 0)]
    assert (await balance(gw, key))["balance"] == 10

    # The 503 said to retry: the same Idempotency-Key now runs the request anew.
    retried = await gw.client.post("/v1/text-to-image", json=T2I, headers=headers)
    assert retried.status_code == 200, retried.text
    assert "idempotent-replayed" not in retried.headers
    assert (await balance(gw, key))["balance"] == pytest.approx(10 - retried.json()["charged"])
    await audit_clean(gw)
