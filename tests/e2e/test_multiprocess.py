"""Replicas that survive each other: two `gateway serve` and a `gateway worker` on one PostgreSQL
and one blob folder; `kill -9` of whichever process runs a job, and the job is still finished once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import pytest

from tests.e2e.processes import Cluster, cluster
from tests.fakes.api2convert import FakeApi2Convert
from tests.waiting import eventually

T2I = {"prompt": "a lighthouse at dusk", "width": 512, "height": 512, "steps": 30}
LEASE_S = 2
# The fake finishes a vendor job at its 25th status poll, polled every 0.1 s: each attempt takes
# about 2.5 s, long enough to kill the process running it mid-flight.
POLLS_PER_JOB = 25


def write_config(path: Path, vendor_url: str, blobs: Path) -> Path:
    path.write_text(
        f"""
demo_tenant = false
lease_s = {LEASE_S}
sync_wait_s = 20
db_pool_min = 1
db_pool_max = 4
worker_concurrency = 8

[engines.a2c]
kind = "api2convert"
base_url = "{vendor_url}"
api_key_env = "A2C_KEY"
poll_interval_s = 0.1
max_poll_interval_s = 0.1
timeout_s = 20

[routes]
"text-to-image" = ["a2c"]

[storage]
kind = "filesystem"
path = "{blobs}"
"""
    )
    return path


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    created = await asyncpg.create_pool(database_url, min_size=1, max_size=3)
    assert created is not None
    yield created
    await created.close()


async def _jobs(pool: asyncpg.Pool) -> dict[UUID, asyncpg.Record]:
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT id, state, lease_owner, runs FROM jobs")
    return {row["id"]: row for row in rows}


async def _submit_async(client: httpx.AsyncClient, key: str) -> UUID:
    response = await client.post("/v1/text-to-image", json={**T2I, "async": True}, headers={"X-Api-Key": key})
    assert response.status_code == 202, response.text
    return UUID(response.json()["id"])


async def _tenant(c: Cluster) -> str:
    created = await asyncio.to_thread(c.run, "tenants", "create", "replicas", "--credits", "10", "--json")
    assert created.returncode == 0, created.stderr
    key: str = json.loads(created.stdout)["key"]
    return key


async def test_kill_9_of_the_process_running_a_job_hands_it_to_a_survivor_and_charges_once(
    database_url: str, pool: asyncpg.Pool, fake_api2convert: FakeApi2Convert, tmp_path: Path
) -> None:
    fake_api2convert.slow_job(POLLS_PER_JOB)
    config = write_config(tmp_path / "gateway.toml", fake_api2convert.base_url, tmp_path / "blobs")
    env = {"GATEWAY_CONFIG": str(config), "GATEWAY_DATABASE_URL": database_url, "A2C_KEY": fake_api2convert.api_key}
    with cluster(env, tmp_path / "logs") as c:
        # API replicas as Kubernetes runs them (no runner loop) and one runner.
        api_a = c.serve("api-a", GATEWAY_RUN_WORKER="false")
        api_b = c.serve("api-b", GATEWAY_RUN_WORKER="false")
        runner = c.worker("runner-1")
        key, *_ = await asyncio.gather(_tenant(c), api_a.wait_ready(), api_b.wait_ready())

        async with (
            httpx.AsyncClient(base_url=api_a.base_url, timeout=30) as client_a,
            httpx.AsyncClient(base_url=api_b.base_url, timeout=30) as client_b,
        ):
            # A sync request runs inline in api-a, under api-a's lease.
            sync_call = asyncio.create_task(client_a.post("/v1/text-to-image", json=T2I, headers={"X-Api-Key": key}))
            running = await eventually(_jobs_running(pool), timeout_s=15, what="api-a to start the sync job")
            [(sync_id, sync_job)] = running.items()
            api_a_owner = sync_job["lease_owner"]
            # Async requests through api-b are claimed by the runner.
            first_batch = [await _submit_async(client_b, key) for _ in range(3)]
            jobs = await eventually(
                _all_running(pool, first_batch), timeout_s=15, what=f"the runner to claim the async jobs\n{c.logs()}"
            )
            runner_owner = jobs[first_batch[0]]["lease_owner"]
            assert runner_owner != api_a_owner
            assert {jobs[j]["lease_owner"] for j in first_batch} == {runner_owner}

            api_a.kill()
            with pytest.raises(httpx.TransportError):
                await sync_call  # the client of the dead replica sees its connection drop

            # After the lease expires the runner takes the orphaned job over...
            taken = await eventually(
                _owned_by(pool, sync_id, runner_owner),
                timeout_s=LEASE_S + 10,
                what=f"the runner to take over\n{c.logs()}",
            )
            assert taken["runs"] == 2
            # ...and dies too, holding it. Jobs queued now wait in the database for the next runner.
            runner.kill()
            second_batch = [await _submit_async(client_b, key) for _ in range(2)]
            assert {(await _jobs(pool))[j]["state"] for j in second_batch} == {"queued"}

            c.worker("runner-2")
            everything = [sync_id, *first_batch, *second_batch]
            final = await eventually(
                _all_finished(pool, everything), timeout_s=30, what=f"every job to finish\n{c.logs()}"
            )

            assert {final[j]["state"] for j in everything} == {"succeeded"}, c.logs()
            assert final[sync_id]["runs"] == 3  # api-a, runner-1, runner-2
            # The surviving replica serves the result of the job the dead one had started.
            view = (await client_b.get(f"/v1/jobs/{sync_id}", headers={"X-Api-Key": key})).json()
            assert view["state"] == "succeeded"
            assert view["charged"] == 0.4
            file = await client_b.get(view["results"][0]["url"])
            assert file.status_code == 200
            assert file.content.startswith(b"\x89PNG")

        await _assert_charged_exactly_once(pool, everything)
        audit = await asyncio.to_thread(c.run, "billing", "audit")
        assert audit.returncode == 0, audit.stdout + audit.stderr
        assert "FAIL" not in audit.stdout


def _jobs_running(pool: asyncpg.Pool) -> Any:
    async def check() -> dict[UUID, asyncpg.Record]:
        return {k: v for k, v in (await _jobs(pool)).items() if v["state"] == "running"}

    return check


def _all_running(pool: asyncpg.Pool, ids: list[UUID]) -> Any:
    async def check() -> dict[UUID, asyncpg.Record] | None:
        jobs = await _jobs(pool)
        return jobs if all(jobs[j]["state"] == "running" for j in ids) else None

    return check


def _owned_by(pool: asyncpg.Pool, job_id: UUID, owner: str) -> Any:
    async def check() -> asyncpg.Record | None:
        job = (await _jobs(pool))[job_id]
        return job if job["lease_owner"] == owner and job["state"] == "running" else None

    return check


def _all_finished(pool: asyncpg.Pool, ids: list[UUID]) -> Any:
    async def check() -> dict[UUID, asyncpg.Record] | None:
        jobs = await _jobs(pool)
        return jobs if all(jobs[j]["state"] in {"succeeded", "failed", "canceled"} for j in ids) else None

    return check


async def _assert_charged_exactly_once(pool: asyncpg.Pool, ids: list[UUID]) -> None:
    async with pool.acquire() as conn:
        reservations = await conn.fetch("SELECT job_id, state, amount, charged, released FROM reservations")
        charges = await conn.fetch(
            """SELECT job_id, count(*) AS n, sum(amount) AS total FROM ledger_entries
               WHERE kind = 'charge' GROUP BY job_id"""
        )
        balance = await conn.fetchval("SELECT balance FROM wallets")
    assert {r["job_id"] for r in reservations} == set(ids)
    assert {(r["state"], r["charged"], r["released"]) for r in reservations} == {("settled", 400, 0)}
    assert {c["job_id"]: (c["n"], c["total"]) for c in charges} == dict.fromkeys(ids, (1, -400))
    assert balance == 10_000 - 400 * len(ids)
