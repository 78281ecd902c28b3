"""The retention sweeper on a real PostgreSQL and blob folder, behind the running gateway: what it
deletes, what it keeps, and that replays, downloads, the ledger and the audit stay true after it."""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from gateway.cli import main
from gateway.config import Settings
from gateway.storage.base import BlobNotFound
from gateway.storage.filesystem import FilesystemBlobStore
from gateway.worker.retention import RetentionSweeper
from tests.conftest import Gateway
from tests.e2e.test_generation_billing import T2I, audit_clean, auth
from tests.fakes.images import png
from tests.waiting import eventually

MakeGateway = Callable[..., Awaitable[Gateway]]


class CountingStore(FilesystemBlobStore):
    """The real folder store, counting deletes; `block_after` deletes, the next ones hang (a sweep
    killed mid-batch is a task cancelled while they hang)."""

    def __init__(self, root: Path, block_after: int | None = None) -> None:
        super().__init__(root)
        self.deleted: collections.Counter[str] = collections.Counter()
        self.block_after = block_after
        self.blocked = asyncio.Event()
        self.done_before_block = asyncio.Event()
        self._started = 0

    async def delete(self, key: str) -> None:
        self._started += 1
        if self.block_after is not None and self._started > self.block_after:
            self.blocked.set()
            await asyncio.Event().wait()
        await super().delete(key)
        self.deleted[key] += 1
        if sum(self.deleted.values()) == self.block_after:
            self.done_before_block.set()


def settings_of(gw: Gateway, **retention: Any) -> Settings:
    settings: Settings = gw.app.state.settings
    return msgspec.structs.replace(settings, retention=msgspec.structs.replace(settings.retention, **retention))


def store(data_dir: Path, **kwargs: Any) -> CountingStore:
    return CountingStore(data_dir / "blobs", **kwargs)


async def generate(gw: Gateway, key: str, n: int = 1, headers: dict[str, str] | None = None) -> dict[str, Any]:
    response = await gw.client.post("/v1/text-to-image", json={**T2I, "n": n}, headers={**auth(key), **(headers or {})})
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    assert job["state"] == "succeeded"
    return job


async def image_to_image(gw: Gateway, key: str) -> dict[str, Any]:
    response = await gw.client.post(
        "/v1/image-to-image",
        data={"prompt": "autumn", "strength": "0.5", "width": "512", "height": "512"},
        files={"image": ("in.png", png(512, 512), "image/png")},
        headers=auth(key),
    )
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


async def blob_keys(gw: Gateway, job_id: str) -> list[str]:
    async with gw.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT blob_key FROM files WHERE job_id = $1 UNION ALL SELECT blob_key FROM job_inputs WHERE job_id = $1",
            job_id,
        )
    return [r[0] for r in rows]


async def stored(blobs: FilesystemBlobStore, key: str) -> bool:
    try:
        await blobs.get(key)
    except BlobNotFound:
        return False
    return True


async def expire_files(gw: Gateway, job_id: str) -> None:
    async with gw.pool.acquire() as conn:
        await conn.execute("UPDATE files SET expires_at = now() - interval '1 second' WHERE job_id = $1", job_id)


async def age_jobs(gw: Gateway, days: int) -> None:
    async with gw.pool.acquire() as conn:
        await conn.execute("UPDATE jobs SET created_at = created_at - make_interval(days => $1)", days)


async def test_expired_outputs_and_finished_inputs_go_while_unexpired_files_stay(
    gateway: Gateway, data_dir: Path
) -> None:
    _, key = await gateway.tenant(credits=10)
    old = await generate(gateway, key)
    fresh = await generate(gateway, key)
    edited = await image_to_image(gateway, key)
    old_file = old["results"][0]["file_id"]
    async with gateway.pool.acquire() as conn:
        input_key = await conn.fetchval("SELECT blob_key FROM job_inputs WHERE job_id = $1", edited["id"])
    old_blob = (await blob_keys(gateway, old["id"]))[0]
    await expire_files(gateway, old["id"])
    blobs = store(data_dir)
    assert await stored(blobs, old_blob)
    assert await stored(blobs, input_key)

    report = await RetentionSweeper(pool=gateway.pool, blobs=blobs, settings=settings_of(gateway)).sweep()

    assert (report.output_blobs, report.input_blobs, report.jobs, report.blob_errors) == (1, 1, 0, 0)
    assert not await stored(blobs, old_blob)
    assert not await stored(blobs, input_key)
    for key_ in (await blob_keys(gateway, fresh["id"])) + (await blob_keys(gateway, edited["id"])):
        assert await stored(blobs, key_)
    async with gateway.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM job_inputs") == 0
        assert await conn.fetchval("SELECT blob_deleted_at IS NOT NULL FROM files WHERE id = $1", old_file)
    # The expired file's row is kept: its download still says Gone, not Not Found.
    assert (await gateway.client.get(f"/v1/files/{old_file}")).status_code == 410
    fresh_file = fresh["results"][0]["file_id"]
    assert (await gateway.client.get(f"/v1/files/{fresh_file}")).status_code == 200
    await audit_clean(gateway)


async def test_idempotency_keys_past_the_ttl_are_deleted_and_a_replay_creates_a_new_job(
    gateway: Gateway, data_dir: Path
) -> None:
    _, key = await gateway.tenant(credits=10)
    headers = {"Idempotency-Key": "order-1"}
    first = await generate(gateway, key, headers=headers)
    assert (await generate(gateway, key, headers=headers))["id"] == first["id"]  # within the TTL: a replay
    await generate(gateway, key, headers={"Idempotency-Key": "order-2"})
    async with gateway.pool.acquire() as conn:
        await conn.execute("UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = 'order-1'")

    report = await RetentionSweeper(pool=gateway.pool, blobs=store(data_dir), settings=settings_of(gateway)).sweep()

    assert report.idempotency_keys == 1
    async with gateway.pool.acquire() as conn:
        assert await conn.fetchval("SELECT array_agg(key) FROM idempotency_keys") == ["order-2"]
    again = await generate(gateway, key, headers=headers)
    assert again["id"] != first["id"]
    await audit_clean(gateway)


async def test_jobs_past_jobs_days_go_while_ledger_usage_and_audit_stay_whole(gateway: Gateway, data_dir: Path) -> None:
    _, key = await gateway.tenant(credits=10)
    old = await generate(gateway, key, n=2)
    kept = await generate(gateway, key)
    await image_to_image(gateway, key)
    old_blobs = await blob_keys(gateway, old["id"])
    ledger_before = (await gateway.client.get("/v1/ledger", headers=auth(key))).json()
    usage_before = (await gateway.client.get("/v1/usage", headers=auth(key))).json()
    async with gateway.pool.acquire() as conn:
        # Everything but `kept` is 91 days old; `kept` stays young.
        await conn.execute(
            "UPDATE jobs SET created_at = created_at - interval '91 days' WHERE id <> $1::uuid", kept["id"]
        )
        await conn.execute(
            "INSERT INTO dashboard_sessions (token_hash, kind, operator_key_id, secret_hash, csrf_token, created_at,"
            " expires_at) SELECT 'x', 'operator', id, secret_hash, 'c', now() - interval '2 hours',"
            " now() - interval '1 hour' FROM operator_keys LIMIT 1"
        )

    report = await RetentionSweeper(pool=gateway.pool, blobs=store(data_dir), settings=settings_of(gateway)).sweep()

    assert (report.jobs, report.dashboard_sessions, report.blob_errors) == (2, 1, 0)
    blobs = store(data_dir)
    for blob in old_blobs:
        assert not await stored(blobs, blob)
    async with gateway.pool.acquire() as conn:
        assert await conn.fetchval("SELECT array_agg(id::text) FROM jobs") == [kept["id"]]
        for table in ("job_results", "job_attempts", "files", "reservations"):
            left = await conn.fetchval(f"SELECT count(*) FROM {table} WHERE job_id <> $1::uuid", kept["id"])
            assert left == 0, table
    assert (await gateway.client.get(f"/v1/jobs/{old['id']}", headers=auth(key))).status_code == 404
    assert (await gateway.client.get("/v1/ledger", headers=auth(key))).json() == ledger_before
    assert (await gateway.client.get("/v1/usage", headers=auth(key))).json() == usage_before
    await audit_clean(gateway)


async def test_two_sweepers_at_once_delete_each_blob_once(gateway: Gateway, data_dir: Path) -> None:
    _, key = await gateway.tenant(credits=20)
    jobs = [await generate(gateway, key, n=3) for _ in range(4)]
    for job in jobs:
        await expire_files(gateway, job["id"])
    await age_jobs(gateway, 91)
    expected = {blob for job in jobs for blob in await blob_keys(gateway, job["id"])}
    settings = settings_of(gateway, batch_size=2)
    one, two = store(data_dir), store(data_dir)

    reports = await asyncio.gather(
        RetentionSweeper(pool=gateway.pool, blobs=one, settings=settings).sweep(),
        RetentionSweeper(pool=gateway.pool, blobs=two, settings=settings).sweep(),
    )

    both = one.deleted + two.deleted
    assert set(both) == expected
    assert set(both.values()) == {1}
    assert sum(r.output_blobs for r in reports) == len(expected)
    assert sum(r.jobs for r in reports) == len(jobs)
    await audit_clean(gateway)


async def test_a_sweep_killed_half_way_is_finished_by_the_next(gateway: Gateway, data_dir: Path) -> None:
    _, key = await gateway.tenant(credits=20)
    jobs = [await generate(gateway, key, n=2) for _ in range(3)]
    for job in jobs:
        await expire_files(gateway, job["id"])
    expected = {blob for job in jobs for blob in await blob_keys(gateway, job["id"])}
    settings = settings_of(gateway, batch_size=4)
    dying = store(data_dir, block_after=3)

    sweep = asyncio.create_task(RetentionSweeper(pool=gateway.pool, blobs=dying, settings=settings).sweep())
    await dying.blocked.wait()
    await dying.done_before_block.wait()
    sweep.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sweep
    async with gateway.pool.acquire() as conn:
        marked = await conn.fetchval("SELECT count(*) FROM files WHERE blob_deleted_at IS NOT NULL")
    # The first batch (4 files) had 3 blobs deleted and was rolled back: no tombstone claims more than is gone.
    assert sum(dying.deleted.values()) == 3
    assert marked == 0

    report = await RetentionSweeper(pool=gateway.pool, blobs=store(data_dir), settings=settings).sweep()

    assert report.output_blobs == len(expected)
    blobs = store(data_dir)
    for blob in expected:
        assert not await stored(blobs, blob)
    async with gateway.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM files WHERE blob_deleted_at IS NULL") == 0


async def test_the_runner_sweeps_on_its_schedule_and_metrics_count_it(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway(retention={"interval_s": 0.05})
    _, key = await gateway.tenant(credits=10)
    job = await generate(gateway, key)
    await expire_files(gateway, job["id"])
    async with gateway.pool.acquire() as conn:

        async def swept() -> bool:
            return bool(
                await conn.fetchval("SELECT blob_deleted_at IS NOT NULL FROM files WHERE job_id = $1", job["id"])
            )

        await eventually(swept, what="the in-process sweeper sweeping the expired file")
    metrics = (await gateway.client.get("/metrics")).text
    assert 'gateway_retention_swept_total{kind="output_blobs"} 1.0' in metrics
    assert "gateway_retention_last_sweep_timestamp_seconds" in metrics


async def test_retention_run_dry_run_counts_and_deletes_nothing(
    gateway: Gateway, data_dir: Path, database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    _, key = await gateway.tenant(credits=10)
    job = await generate(gateway, key)
    await expire_files(gateway, job["id"])
    monkeypatch.setenv("GATEWAY_DATABASE_URL", database_url)
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(data_dir))

    assert await asyncio.to_thread(main, ["retention", "run", "--dry-run", "--json"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert dry["dry_run"] is True
    assert (dry["output_blobs"], dry["jobs"], dry["idempotency_keys"]) == (1, 0, 0)
    async with gateway.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM files WHERE blob_deleted_at IS NULL") == 1

    assert await asyncio.to_thread(main, ["retention", "run", "--json"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert (done["dry_run"], done["output_blobs"]) == (False, 1)
    assert (await gateway.client.get(f"/v1/files/{job['results'][0]['file_id']}")).status_code == 410


async def test_ended_webhook_messages_past_webhook_days_go_and_pending_ones_stay(
    gateway: Gateway, data_dir: Path
) -> None:
    tenant_id, _ = await gateway.tenant(credits=1)
    messages = {
        "delivered-long-ago": ("now() - interval '8 days'", "NULL"),
        "dead-long-ago": ("NULL", "now() - interval '9 days'"),
        "delivered-yesterday": ("now() - interval '1 day'", "NULL"),
        "still-retrying": ("NULL", "NULL"),
    }
    async with gateway.pool.acquire() as conn:
        for message_id, (delivered, failed) in messages.items():
            await conn.execute(
                "INSERT INTO webhook_outbox (tenant_id, message_id, url, event_type, payload, delivered_at, failed_at,"
                f" created_at, next_attempt_at) VALUES ($1, $2, 'https://example.com/hook', 'job.succeeded', '{{}}',"
                f" {delivered}, {failed}, now() - interval '10 days', now() + interval '1 hour')",
                tenant_id,
                message_id,
            )

    report = await RetentionSweeper(pool=gateway.pool, blobs=store(data_dir), settings=settings_of(gateway)).sweep()

    assert report.webhook_messages == 2
    async with gateway.pool.acquire() as conn:
        left = await conn.fetchval("SELECT array_agg(message_id ORDER BY message_id) FROM webhook_outbox")
    assert left == ["delivered-yesterday", "still-retrying"]


class FailingStore(CountingStore):
    """Refuses to delete one key, as a store that is down for it would."""

    def __init__(self, root: Path, refuse: str) -> None:
        super().__init__(root)
        self.refuse = refuse

    async def delete(self, key: str) -> None:
        if key == self.refuse:
            raise OSError("the disk said no")
        await super().delete(key)


async def test_a_blob_that_cannot_be_deleted_keeps_its_row_for_the_next_sweep(gateway: Gateway, data_dir: Path) -> None:
    _, key = await gateway.tenant(credits=10)
    job = await generate(gateway, key, n=2)
    await expire_files(gateway, job["id"])
    stuck, other = await blob_keys(gateway, job["id"])

    report = await RetentionSweeper(
        pool=gateway.pool, blobs=FailingStore(data_dir / "blobs", stuck), settings=settings_of(gateway)
    ).sweep()

    assert (report.output_blobs, report.blob_errors) == (1, 1)
    async with gateway.pool.acquire() as conn:
        left = await conn.fetchval("SELECT array_agg(blob_key) FROM files WHERE blob_deleted_at IS NULL")
    assert left == [stuck]
    assert not await stored(store(data_dir), other)
    again = await RetentionSweeper(pool=gateway.pool, blobs=store(data_dir), settings=settings_of(gateway)).sweep()
    assert (again.output_blobs, again.blob_errors) == (1, 0)
