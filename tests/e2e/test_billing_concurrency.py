"""Exactly-once money under concurrency, random engine failures and runners that die mid-job."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
import pytest

from gateway.billing.settlement import Outcome, settle
from gateway.config import Settings
from gateway.db import jobs as jq
from gateway.db.pool import create_pool
from gateway.engines.registry import build_engines
from gateway.metrics import Metrics
from gateway.routing.router import Router
from gateway.storage.filesystem import FilesystemBlobStore
from gateway.worker.runner import JobRunner
from tests.conftest import Gateway
from tests.e2e.test_generation_billing import T2I, audit_clean, auth, balance
from tests.fakes.api2convert import FakeApi2Convert, FakeJob
from tests.waiting import eventually

PRICE = 400  # millicredits: the default price of a 512x512, 30-step image


@dataclass
class FlakyApi2Convert(FakeApi2Convert):
    """The api2convert fake, speaking its protocol over real HTTP, whose jobs fail at random."""

    failure_rate: float = 0.3
    rng: random.Random = field(default_factory=lambda: random.Random(20240604))
    failed_jobs: int = 0

    def _finish(self, job: FakeJob) -> None:
        if self.rng.random() < self.failure_rate:
            self.failed_jobs += 1
            job.status = "failed"
            job.errors = [{"source": "conversion", "id_source": job.conversions[0]["id"], "code": 99, "message": "x"}]
            return
        super()._finish(job)


@pytest.fixture
def flaky_vendor() -> Iterator[FlakyApi2Convert]:
    fake = FlakyApi2Convert()
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()
    assert fake.violations == [], "requests to the flaky vendor broke its OpenAPI document"


def only_engine(base_url: str) -> dict[str, Any]:
    """Settings that route text-to-image to one engine at `base_url`, with no retries, so each
    vendor failure fails its job (and no breaker trips on a run of bad luck)."""
    return {
        "engines": {
            "flaky": {
                "kind": "api2convert",
                "base_url": base_url,
                "api_key_env": "A2C_KEY",
                "poll_interval_s": 0.01,
                "max_poll_interval_s": 0.05,
                "timeout_s": 60,
                "max_concurrency": 64,
            }
        },
        "routes": {"text-to-image": ["flaky"]},
        "routing": {
            "max_attempts": 1,
            "backoff_base_s": 0.0,
            "breaker_consecutive_failures": 100_000,
            "breaker_error_rate": 1.0,
            "breaker_window": 100_000,
        },
        "sync_wait_s": 60,
    }


async def money_of(pool: Any, tenant_id: UUID) -> dict[str, Any]:
    async with pool.acquire() as conn:
        wallet = await conn.fetchrow("SELECT balance, held, active_jobs FROM wallets WHERE tenant_id = $1", tenant_id)
        charges = await conn.fetch(
            "SELECT job_id, amount, balance_after FROM ledger_entries WHERE tenant_id = $1 AND kind = 'charge'",
            tenant_id,
        )
        lowest = await conn.fetchval("SELECT min(balance_after) FROM ledger_entries WHERE tenant_id = $1", tenant_id)
        jobs = await conn.fetch(
            """SELECT j.id, j.state, j.images_succeeded, j.charged, r.state AS reservation, r.charged AS r_charged,
                      r.released, r.amount
               FROM jobs j JOIN reservations r ON r.job_id = j.id WHERE j.tenant_id = $1""",
            tenant_id,
        )
    return {"wallet": dict(wallet), "charges": charges, "lowest": lowest, "jobs": jobs}


async def test_two_hundred_concurrent_requests_on_a_wallet_for_120_images_with_a_flaky_engine(
    make_gateway: Callable[..., Awaitable[Gateway]], flaky_vendor: FlakyApi2Convert
) -> None:
    gw = await make_gateway(**only_engine(flaky_vendor.base_url))
    tenant_id, key = await gw.tenant(credits=48, max_concurrent_jobs=200)  # 120 images at 0.4

    responses = await asyncio.gather(
        *(gw.client.post("/v1/text-to-image", json=T2I, headers=auth(key)) for _ in range(200))
    )

    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {200, 402, 503}, statuses
    succeeded = [r.json() for r in responses if r.status_code == 200]
    failed = [r.json()["job"] for r in responses if r.status_code == 503]
    refused = [r.json() for r in responses if r.status_code == 402]
    assert all(j["state"] == "succeeded" and j["charged"] == 0.4 for j in succeeded)
    assert all(j["state"] == "failed" and j["charged"] == 0 for j in failed)
    assert all(p["type"].endswith("/insufficient-credits") and p["price"] == 0.4 for p in refused)
    # Admission only ever lowers what is available until a job ends, so the first 120 always get in.
    admitted = len(succeeded) + len(failed)
    assert admitted >= 120
    assert len(succeeded) <= 120
    # Both the random faults and the empty wallet were exercised.
    assert failed, statuses
    assert refused, statuses
    assert len(failed) == flaky_vendor.failed_jobs

    money = await money_of(gw.pool, tenant_id)
    assert len(money["jobs"]) == admitted
    for job in money["jobs"]:
        if job["state"] == "succeeded":
            assert (job["reservation"], job["r_charged"], job["charged"]) == ("settled", PRICE, PRICE)
        else:
            assert job["state"] == "failed"
            assert (job["reservation"], job["r_charged"], job["released"]) == ("released", 0, PRICE)
    assert len(money["charges"]) == len(succeeded)
    assert {c["job_id"] for c in money["charges"]} == {UUID(j["id"]) for j in succeeded}
    assert money["wallet"] == {"balance": 48_000 - len(succeeded) * PRICE, "held": 0, "active_jobs": 0}
    assert money["lowest"] >= 0
    assert (await balance(gw, key))["available"] == (48_000 - len(succeeded) * PRICE) / 1000
    await audit_clean(gw)


async def test_concurrent_requests_with_one_idempotency_key_create_and_charge_one_job(gateway: Gateway) -> None:
    tenant_id, key = await gateway.tenant(credits=10)
    headers = {**auth(key), "Idempotency-Key": "checkout-7"}
    responses = await asyncio.gather(
        *(gateway.client.post("/v1/text-to-image", json=T2I, headers=headers) for _ in range(8))
    )
    statuses = Counter(r.status_code for r in responses)
    # One request does the work; the others see it in flight (409) or replay its finished job.
    assert statuses[200] >= 1, statuses
    assert set(statuses) <= {200, 409}, statuses
    assert len({r.json()["id"] for r in responses if r.status_code == 200}) == 1
    replay = await gateway.client.post("/v1/text-to-image", json=T2I, headers=headers)
    assert replay.status_code == 200
    assert replay.headers["idempotent-replayed"] == "true"
    money = await money_of(gateway.pool, tenant_id)
    assert len(money["jobs"]) == 1
    assert len(money["charges"]) == 1
    assert money["wallet"]["balance"] == 10_000 - PRICE
    await audit_clean(gateway)


# -- runners that die or stall mid-job -------------------------------------------------------


@pytest.fixture
async def runner_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the test's own event loop for runners the test drives itself."""
    pool = await create_pool(database_url, min_size=1, max_size=4, statement_cache_size=100)
    yield pool
    await pool.close()


RunnerFactory = Callable[..., JobRunner]


@pytest.fixture
async def standalone_runner(runner_pool: asyncpg.Pool) -> AsyncIterator[RunnerFactory]:
    """Runners like the one a `gateway worker` process builds, living on the test's loop."""
    built: list[JobRunner] = []

    def build(settings: Settings, cls: type[JobRunner] = JobRunner) -> JobRunner:
        metrics = Metrics()
        router = Router.from_settings(settings, build_engines(settings), metrics)
        blobs = FilesystemBlobStore(Path(settings.data_dir) / "blobs")
        runner = cls(pool=runner_pool, router=router, blobs=blobs, settings=settings, metrics=metrics)
        built.append(runner)
        return runner

    yield build
    for runner in built:
        await runner.router.aclose()
        await runner.blobs.aclose()


class StalledRunner(JobRunner):
    """A runner that stops renewing its leases (a long GC pause, a network partition) but keeps
    working and later tries to settle, as a runner that was only presumed dead would."""

    async def _keep_lease(self, job_id: UUID, progress: dict[str, float], lost: asyncio.Event) -> None:
        await asyncio.Event().wait()


async def claim_one(pool: asyncpg.Pool, runner: JobRunner, lease_s: float) -> asyncpg.Record:
    async with pool.acquire() as conn:
        rows = await jq.claim_jobs(conn, runner.owner, lease_s, 1)
    assert len(rows) == 1
    return rows[0]


async def wait_finished(gw: Gateway, key: str, job_id: str, timeout_s: float = 30) -> dict[str, Any]:
    async def finished() -> dict[str, Any] | None:
        job: dict[str, Any] = (await gw.client.get(f"/v1/jobs/{job_id}", headers=auth(key))).json()
        return job if job["state"] in ("succeeded", "failed", "canceled") else None

    job: dict[str, Any] = await eventually(finished, timeout_s=timeout_s, what="the job finished")
    return job


async def assert_settled_once(gw: Gateway, tenant_id: UUID, key: str, job: dict[str, Any], images: int) -> None:
    money = await money_of(gw.pool, tenant_id)
    assert len(money["charges"]) == 1
    assert money["charges"][0]["amount"] == -images * PRICE
    assert money["wallet"] == {"balance": 10_000 - images * PRICE, "held": 0, "active_jobs": 0}
    async with gw.pool.acquire() as conn:
        runs = await conn.fetchval("SELECT runs FROM jobs WHERE id = $1", UUID(job["id"]))
    assert runs == 2
    # The images the tenant paid for are really there, whichever runner's copy survived.
    for result in job["results"]:
        file = await gw.client.get(result["url"])
        assert file.status_code == 200, result
        assert file.content.startswith(b"\x89PNG")
    await audit_clean(gw)


async def test_a_job_running_longer_than_its_lease_keeps_it_and_runs_once(
    make_gateway: Callable[..., Awaitable[Gateway]], fake_api2convert: FakeApi2Convert
) -> None:
    api = await make_gateway(lease_s=1)
    tenant_id, key = await api.tenant(credits=10)
    fake_api2convert.slow_job(60)  # 60 status polls, backing off to 50 ms: a few lease lengths
    await make_gateway(lease_s=1)  # a replica whose runner would take the job over if its lease lapsed
    response = await api.client.post("/v1/text-to-image", json={**T2I, "n": 2, "async": True}, headers=auth(key))
    assert response.status_code == 202
    started = asyncio.get_running_loop().time()
    job = await wait_finished(api, key, response.json()["id"])
    assert asyncio.get_running_loop().time() - started > 2, "the job should outlast its lease"
    assert job["state"] == "succeeded", job
    money = await money_of(api.pool, tenant_id)
    assert [charge["amount"] for charge in money["charges"]] == [-2 * PRICE]
    async with api.pool.acquire() as conn:
        runs = await conn.fetchval("SELECT runs FROM jobs WHERE id = $1", UUID(job["id"]))
    assert runs == 1, "its runner renewed the lease while the engine worked, so nobody took it over"
    await audit_clean(api)


async def test_a_job_whose_runner_was_killed_mid_run_is_taken_over_and_charged_once(
    make_gateway: Callable[..., Awaitable[Gateway]],
    fake_api2convert: FakeApi2Convert,
    runner_pool: asyncpg.Pool,
    standalone_runner: RunnerFactory,
) -> None:
    api = await make_gateway(run_worker=False, lease_s=1)
    tenant_id, key = await api.tenant(credits=10)
    fake_api2convert.slow_job(30)  # each vendor job takes a while of polling
    response = await api.client.post("/v1/text-to-image", json={**T2I, "n": 2, "async": True}, headers=auth(key))
    assert response.status_code == 202
    job_id = response.json()["id"]

    doomed = standalone_runner(api.app.state.settings)
    task = doomed.spawn(await claim_one(runner_pool, doomed, lease_s=1))
    await eventually(lambda: any(c.method == "GET" for c in fake_api2convert.calls), what="the vendor job under way")
    assert not task.done()
    task.cancel()  # killed: no more lease renewals, no settlement
    with pytest.raises(asyncio.CancelledError):
        await task

    # A replica whose runner takes over once the killed run's 1 s lease expires. Its own run holds a
    # 3 s lease: renewed every second, a loaded CI machine cannot make it lapse into a third run.
    await make_gateway(lease_s=3)
    job = await wait_finished(api, key, job_id)
    assert job["state"] == "succeeded", job
    assert (job["images_succeeded"], job["charged"]) == (2, 0.8)
    await assert_settled_once(api, tenant_id, key, job, images=2)

    # The killed runner's outcome, were it ever to arrive, finds the books closed.
    assert not await settle(runner_pool, UUID(job_id), PRICE, 2, Outcome(state="failed"), file_ttl_s=60)
    await assert_settled_once(api, tenant_id, key, job, images=2)


async def test_a_stalled_runner_finishing_after_the_takeover_is_refused_and_keeps_the_paid_images(
    make_gateway: Callable[..., Awaitable[Gateway]],
    fake_api2convert: FakeApi2Convert,
    runner_pool: asyncpg.Pool,
    standalone_runner: RunnerFactory,
) -> None:
    api = await make_gateway(run_worker=False, lease_s=1)
    tenant_id, key = await api.tenant(credits=10)
    fake_api2convert.slow_job(20)
    response = await api.client.post("/v1/text-to-image", json={**T2I, "n": 2, "async": True}, headers=auth(key))
    job_id = response.json()["id"]

    # The stalled runner polls its vendor slowly, so the runner that takes over finishes first.
    settings: Settings = api.app.state.settings
    a2c = msgspec.structs.replace(settings.engines["a2c"], poll_interval_s=0.25, max_poll_interval_s=0.25)
    slow = msgspec.structs.replace(settings, engines={**settings.engines, "a2c": a2c})
    stalled = standalone_runner(slow, StalledRunner)
    task = stalled.spawn(await claim_one(runner_pool, stalled, lease_s=1))
    await make_gateway(lease_s=1)  # takes the job over once the lease expires
    job = await wait_finished(api, key, job_id)
    assert job["state"] == "succeeded", job
    assert not task.done(), "the stalled runner should still be at work"
    await task  # it finishes, tries to settle, finds the books closed and discards its own images
    await assert_settled_once(api, tenant_id, key, job, images=2)
    async with api.pool.acquire() as conn:
        files = await conn.fetchval("SELECT count(*) FROM files WHERE job_id = $1", UUID(job_id))
    assert files == 2
