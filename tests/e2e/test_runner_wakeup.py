"""The runner hears queued jobs on the process's one LISTEN connection (gateway/db/notifications.Listener),
and hears them again after that connection was dropped and re-established."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from gateway.config import Settings
from gateway.db import jobs as jq
from gateway.db.notifications import Listener
from gateway.db.pool import create_pool
from gateway.engines.registry import build_engines
from gateway.metrics import Metrics
from gateway.routing.router import Router
from gateway.storage.filesystem import FilesystemBlobStore
from gateway.worker.runner import JobRunner
from tests.conftest import Gateway
from tests.e2e.test_billing_concurrency import wait_finished
from tests.e2e.test_generation_billing import T2I, auth
from tests.fakes.api2convert import FakeApi2Convert
from tests.waiting import eventually


@pytest.fixture
async def runner_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, min_size=1, max_size=4, statement_cache_size=100)
    yield pool
    await pool.close()


async def test_the_runner_wakes_on_notify_and_again_after_its_listen_connection_was_dropped(
    make_gateway: Callable[..., Awaitable[Gateway]],
    fake_api2convert: FakeApi2Convert,
    runner_pool: asyncpg.Pool,
    database_url: str,
) -> None:
    api = await make_gateway(run_worker=False)  # admits and notifies, runs nothing
    _, key = await api.tenant(credits=10)
    settings: Settings = api.app.state.settings
    metrics = Metrics()
    listener = Listener(database_url, reconnect_s=0.05)
    connects: list[None] = []  # the listener calls back with None each time it (re)connects

    def heard(payload: str | None) -> None:
        if payload is None:
            connects.append(None)

    listener.listen(jq.NOTIFY_CHANNEL, heard)
    runner = JobRunner(
        pool=runner_pool,
        router=Router.from_settings(settings, build_engines(settings), metrics),
        blobs=FilesystemBlobStore(Path(settings.data_dir) / "blobs"),
        settings=settings,
        metrics=metrics,
        listener=listener,
    )
    # No polling: a job is claimed only when a notification wakes the runner.
    runner.poll_s = 3600
    await listener.start()
    await runner.start()
    conn = await asyncpg.connect(database_url)
    try:
        # Once the runner has claimed after the connect's wake-up, only a NOTIFY wakes it again.
        await eventually(lambda: len(connects) == 1 and not runner._wake.is_set(), what="the first LISTEN connection")
        first = await api.client.post("/v1/text-to-image", json={**T2I, "async": True}, headers=auth(key))
        assert first.status_code == 202
        assert (await wait_finished(api, key, first.json()["id"]))["state"] == "succeeded"

        # Every LISTEN connection of the database goes: the API's and the runner's listeners reconnect.
        killed = await conn.fetchval(
            """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
               WHERE application_name = 'gateway-listener' AND datname = current_database()"""
        )
        assert killed >= 1
        await eventually(lambda: len(connects) == 2 and not runner._wake.is_set(), what="the LISTEN reconnected")

        second = await api.client.post("/v1/text-to-image", json={**T2I, "async": True}, headers=auth(key))
        assert second.status_code == 202
        assert (await wait_finished(api, key, second.json()["id"]))["state"] == "succeeded"
    finally:
        await conn.close()
        await runner.stop(drain_s=0)
        await listener.stop()
        await runner.router.aclose()
        await runner.blobs.aclose()


async def test_a_gateway_that_runs_jobs_listens_on_one_connection_only(
    make_gateway: Callable[..., Awaitable[Gateway]], database_url: str
) -> None:
    """`gateway serve` and `gateway worker` build their services alike (gateway/bootstrap.py): the
    runner shares the process's reconnecting Listener rather than LISTENing on a connection of its own."""
    gw = await make_gateway()  # runs jobs, as `gateway worker` does
    assert gw.app.state.settings.run_worker
    conn = await asyncpg.connect(database_url)
    try:
        listening = await conn.fetch(
            """SELECT application_name, query FROM pg_stat_activity
               WHERE datname = current_database() AND query LIKE 'LISTEN %'"""
        )
    finally:
        await conn.close()
    assert [row["application_name"] for row in listening] == ["gateway-listener"], listening
