"""The retention sweeper: deletes what the gateway no longer needs, so storage stops growing.

One sweep works through each kind in small batches, one transaction per batch:

- output blobs of expired files (the file row stays, marked `blob_deleted_at`, so downloads keep
  answering 410 until the job itself goes);
- input blobs of finished jobs (with their `job_inputs` rows);
- jobs older than `[retention] jobs_days` with their results, attempts, files, inputs and closed
  reservations; the ledger (which names jobs by id, without a foreign key) and the daily usage
  rollups are never touched, so balances, listings and `gateway billing audit` stay whole;
- idempotency keys older than `idempotency_ttl_s`, expired dashboard sessions, and webhook
  messages delivered or dead more than `webhook_days` ago.

Crash safety: a batch deletes its blobs while it holds the rows' locks and only then writes the
tombstone or deletes the rows, in the same transaction. A sweep killed half-way leaves rows whose
blobs may already be gone; the next sweep deletes them again (a missing blob is no error) and
finishes. Two sweepers never take the same rows (`FOR UPDATE SKIP LOCKED`), and each batch first
takes a transaction-scoped advisory lock, so replicas take turns rather than sweep side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import msgspec

from gateway.config import RetentionConfig, Settings
from gateway.db import Conn
from gateway.db import retention as rq
from gateway.db.pool import Pool
from gateway.db.types import DATABASE_ERRORS
from gateway.metrics import Metrics
from gateway.storage.base import BlobStore
from gateway.storage.cloud import StorageError

log = logging.getLogger(__name__)

KINDS = ("output_blobs", "input_blobs", "jobs", "idempotency_keys", "dashboard_sessions", "webhook_messages")


class SweepReport(msgspec.Struct, kw_only=True):
    """What one sweep deleted (or, for a dry run, would delete)."""

    dry_run: bool = False
    output_blobs: int = 0
    input_blobs: int = 0
    jobs: int = 0
    idempotency_keys: int = 0
    dashboard_sessions: int = 0
    webhook_messages: int = 0
    blob_errors: int = 0  # blob deletes that failed; their rows stay for the next sweep
    busy: bool = False  # another sweeper held the lock, so this one stopped
    seconds: float = 0.0


class _Busy(Exception):
    """Another sweeper holds the lock for now."""


class _BlobErrors(Exception):
    """Some blob deletes of a job batch failed: the batch rolls back, its jobs stay for the next sweep."""


class RetentionSweeper:
    """Runs sweeps: once (`sweep`, the CLI) or every `interval_s` until stopped (`start`/`stop`)."""

    def __init__(self, *, pool: Pool, blobs: BlobStore, settings: Settings, metrics: Metrics | None = None) -> None:
        self.pool = pool
        self.blobs = blobs
        self.settings = settings
        self.config: RetentionConfig = settings.retention
        self.metrics = metrics
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="retention-sweeper")

    async def stop(self) -> None:
        """Stop between batches; a batch cut short rolls back and is redone by the next sweep."""
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        # The first sweep waits one interval too: a process that restarts often must not sweep on
        # every start, and a fresh replica has nothing the running ones would not sweep anyway.
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self.config.interval_s)
            if self._stopping.is_set():
                return
            try:
                report = await self.sweep()
                if any(getattr(report, kind) for kind in KINDS):
                    log.info("retention sweep: %s", msgspec.json.encode(report).decode())
            except DATABASE_ERRORS as exc:
                log.warning("retention sweep failed: %s", exc)

    async def dry_run(self) -> SweepReport:
        """What a sweep would delete now, deleting nothing."""
        started = time.perf_counter()
        async with self.pool.acquire() as conn:
            pending = await rq.pending(
                conn,
                jobs_days=self.config.jobs_days,
                idempotency_ttl_s=self.settings.idempotency_ttl_s,
                webhook_days=self.config.webhook_days,
            )
        return SweepReport(dry_run=True, seconds=time.perf_counter() - started, **msgspec.structs.asdict(pending))

    async def sweep(self) -> SweepReport:
        """Delete everything due, kind by kind, until each is done, another sweeper holds the
        lock, or a kind's blob deletes fail (left for the next sweep)."""
        started = time.perf_counter()
        report = SweepReport()
        steps: list[tuple[str, Callable[[SweepReport], Awaitable[int]]]] = [
            ("output_blobs", self._output_batch),
            ("input_blobs", self._input_batch),
            ("jobs", self._jobs_batch),
            ("idempotency_keys", self._idempotency_batch),
            ("dashboard_sessions", self._sessions_batch),
            ("webhook_messages", self._webhooks_batch),
        ]
        try:
            for kind, batch in steps:
                while not self._stopping.is_set():
                    errors = report.blob_errors
                    done = await batch(report)
                    setattr(report, kind, getattr(report, kind) + done)
                    if self.metrics is not None and done:
                        self.metrics.retention_swept.labels(kind).inc(done)
                    # A failed blob delete leaves its row, which the next batch would claim again:
                    # the kind waits for the next sweep.
                    if done < self.config.batch_size or report.blob_errors > errors:
                        break
        except _Busy:
            report.busy = True
        report.seconds = time.perf_counter() - started
        if self.metrics is not None and not report.busy:
            self.metrics.retention_sweep_seconds.observe(report.seconds)
            self.metrics.retention_last_sweep.set_to_current_time()
        return report

    async def _delete_blobs(self, keys: list[str], report: SweepReport) -> set[str]:
        """Delete `keys` (a missing one counts as deleted); returns those that failed."""
        limit = asyncio.Semaphore(self.config.blob_concurrency)
        failed: set[str] = set()

        async def one(key: str) -> None:
            async with limit:
                try:
                    await self.blobs.delete(key)
                except (OSError, StorageError) as exc:
                    log.warning("retention: deleting blob %s failed: %s", key, exc)
                    failed.add(key)

        await asyncio.gather(*(one(key) for key in keys))
        if failed:
            report.blob_errors += len(failed)
            if self.metrics is not None:
                self.metrics.retention_blob_errors.inc(len(failed))
        return failed

    async def _locked(self, conn: Conn) -> None:
        if not await rq.try_sweep_lock(conn):
            raise _Busy

    async def _output_batch(self, report: SweepReport) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            await self._locked(conn)
            files = await rq.claim_expired_files(conn, self.config.batch_size)
            if not files:
                return 0
            failed = await self._delete_blobs([f.blob_key for f in files], report)
            return await rq.mark_files_swept(conn, [f.file_id for f in files if f.blob_key not in failed and f.file_id])

    async def _input_batch(self, report: SweepReport) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            await self._locked(conn)
            inputs = await rq.claim_finished_inputs(conn, self.config.batch_size)
            if not inputs:
                return 0
            failed = await self._delete_blobs([i.blob_key for i in inputs], report)
            return await rq.delete_inputs(conn, [i for i in inputs if i.blob_key not in failed])

    async def _jobs_batch(self, report: SweepReport) -> int:
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await self._locked(conn)
                batch = await rq.claim_old_jobs(conn, self.config.jobs_days, self.config.batch_size)
                if not batch.ids:
                    return 0
                if await self._delete_blobs(batch.blobs, report):
                    raise _BlobErrors  # rolls the batch back: the jobs stay until all their blobs are gone
                deleted = await rq.delete_jobs(conn, batch)
        except _BlobErrors:
            return 0
        if self.metrics is not None:
            # Blobs deleted with their jobs (a file TTL longer than jobs_days, or a sweep that fell behind).
            self.metrics.retention_swept.labels("job_blobs").inc(len(batch.blobs))
        return deleted.jobs

    async def _idempotency_batch(self, report: SweepReport) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            await self._locked(conn)
            return await rq.delete_idempotency_keys(conn, self.settings.idempotency_ttl_s, self.config.batch_size)

    async def _sessions_batch(self, report: SweepReport) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            await self._locked(conn)
            return await rq.delete_expired_sessions(conn, self.config.batch_size)

    async def _webhooks_batch(self, report: SweepReport) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            await self._locked(conn)
            return await rq.delete_ended_webhooks(conn, self.config.webhook_days, self.config.batch_size)
