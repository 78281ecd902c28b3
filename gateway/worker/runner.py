"""The job runner: claims jobs (FOR UPDATE SKIP LOCKED, with a renewed lease), runs them through
the router, stores the images and settles. LISTEN/NOTIFY wakes it as soon as a job is queued.

A runner may die at any moment: its leases expire and another runner takes the job over.
A job claimed more than `MAX_RUNS` times (it keeps killing runners) fails and is released.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from gateway.billing.settlement import Outcome, StoredImage, settle
from gateway.config import Settings
from gateway.db import jobs as jq
from gateway.db.pool import Pool
from gateway.domain.generation import EngineAttempt, EngineRequest, ImageInput
from gateway.metrics import Metrics
from gateway.routing.errors import AllEnginesFailed, NoEngineCanServe, RequestRejected
from gateway.routing.router import Router
from gateway.storage.base import BlobStore

log = logging.getLogger(__name__)

MAX_RUNS = 3
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


def _problem(slug: str, title: str, status: int, detail: str) -> dict[str, Any]:
    return {"type": f"https://gateway.invalid/problems/{slug}", "title": title, "status": status, "detail": detail}


class JobRunner:
    """Runs jobs for one process. `owner` identifies this process in leases."""

    def __init__(
        self,
        *,
        pool: Pool,
        router: Router,
        blobs: BlobStore,
        settings: Settings,
        metrics: Metrics,
        dsn: str,
        signer: Any = None,
    ) -> None:
        self.pool = pool
        self.router = router
        self.blobs = blobs
        self.settings = settings
        self.metrics = metrics
        self.dsn = dsn
        self.signer = signer
        self.owner = f"runner-{secrets.token_hex(6)}"
        self._slots = asyncio.Semaphore(settings.worker_concurrency)
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._listener: asyncpg.Connection[Any] | None = None

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Listen for new jobs and start claiming."""
        self._listener = await asyncpg.connect(self.dsn)
        await self._listener.add_listener(jq.NOTIFY_CHANNEL, lambda *_: self._wake.set())
        self._loop_task = asyncio.create_task(self._claim_loop(), name="job-runner")

    async def stop(self, drain_s: float = 10.0) -> None:
        """Stop claiming; give in-flight jobs `drain_s` to finish (their leases cover the rest)."""
        self._stopping.set()
        self._wake.set()
        if self._loop_task is not None:
            await self._loop_task
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=drain_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._listener is not None:
            await self._listener.close()

    async def _claim_loop(self) -> None:
        while not self._stopping.is_set():
            free = self._free_slots()
            if free:
                try:
                    async with self.pool.acquire() as conn:
                        rows = await jq.claim_jobs(conn, self.owner, self.settings.lease_s, free)
                except (OSError, asyncpg.PostgresError) as exc:
                    log.warning("claiming jobs failed: %s", exc)
                    rows = []
                for row in rows:
                    self.spawn(row)
                if rows and len(rows) == free:
                    continue
            self._wake.clear()
            # Poll as a safety net: expired leases produce no notification.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=min(1.0, self.settings.lease_s / 3))

    def _free_slots(self) -> int:
        return max(0, self.settings.worker_concurrency - len(self._tasks))

    def spawn(self, row: asyncpg.Record) -> asyncio.Task[None]:
        """Run a claimed job in the background; the returned task ends when it is settled."""
        task = asyncio.create_task(self.execute(row), name=f"job-{row['id']}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: self._wake.set())
        return task

    # -- one job ------------------------------------------------------------------------

    async def execute(self, job: asyncpg.Record) -> None:
        """Run one job we hold the lease on, then settle it (exactly once, whoever finishes)."""
        job_id: UUID = job["id"]
        progress = {"value": 0.0, "written": 0.0}
        lost = asyncio.Event()
        keeper = asyncio.create_task(self._keep_lease(job_id, progress, lost))
        try:
            outcome = await self._run(job, progress, lost)
        except Exception as exc:  # a bug must not leave the reservation open forever
            log.exception("job %s crashed", job_id)
            outcome = Outcome(state="failed", error=_problem("internal-error", "Internal error", 500, str(exc)))
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        if lost.is_set():
            await self._discard(outcome)
            return
        async with self.pool.acquire() as conn:
            cancel = await conn.fetchval("SELECT cancel_requested FROM jobs WHERE id = $1", job_id)
        if cancel:
            await self._discard(outcome)
            outcome = Outcome(
                state="canceled",
                engine=outcome.engine,
                spend=outcome.spend,
                error=_problem("canceled", "Canceled", 409, "The job was canceled."),
            )
        settled = await settle(
            self.pool, job_id, job["unit_price"], job["n"], outcome, file_ttl_s=self.settings.file_ttl_s
        )
        if not settled:
            await self._discard(outcome)
            return
        self.metrics.jobs_finished.labels(job["operation"], outcome.state).inc()
        if outcome.images:
            self.metrics.images_produced.labels(job["operation"], outcome.engine or "none").inc(len(outcome.images))

    async def _discard(self, outcome: Outcome) -> None:
        for image in outcome.images:
            await self.blobs.delete(image.blob_key)
        outcome.images = []

    async def _keep_lease(self, job_id: UUID, progress: dict[str, float], lost: asyncio.Event) -> None:
        interval = self.settings.lease_s / 3
        while True:
            await asyncio.sleep(min(interval, 0.5))
            async with self.pool.acquire() as conn:
                if progress["value"] > progress["written"]:
                    await jq.set_progress(conn, job_id, progress["value"])
                    progress["written"] = progress["value"]
                if not await jq.renew_lease(conn, job_id, self.owner, self.settings.lease_s):
                    lost.set()
                    return

    async def _run(self, job: asyncpg.Record, progress: dict[str, float], lost: asyncio.Event) -> Outcome:
        job_id: UUID = job["id"]
        if job["runs"] > MAX_RUNS:
            return Outcome(
                state="failed",
                error=_problem(
                    "job-abandoned", "Job abandoned", 500, f"The job was started {MAX_RUNS} times without finishing."
                ),
            )
        remaining = job["deadline_at"].timestamp() - time.time()
        if remaining <= 0:
            return Outcome(
                state="failed",
                error=_problem(
                    "deadline-exceeded", "Deadline exceeded", 504, "The job did not finish before its deadline."
                ),
            )
        request = await self._engine_request(job)

        async def on_attempt(attempt: EngineAttempt) -> None:
            async with self.pool.acquire() as conn:
                await jq.insert_attempt(conn, job_id, attempt)

        def on_progress(fraction: float) -> None:
            progress["value"] = max(progress["value"], min(1.0, fraction))

        try:
            routed = await self.router.run(
                request,
                deadline=time.monotonic() + remaining,
                allow=job["allowed_engines"],
                on_attempt=on_attempt,
                progress=on_progress,
            )
        except RequestRejected as exc:
            return Outcome(
                state="failed", error=_problem("engine-rejected-request", "The request was rejected", 422, str(exc))
            )
        except NoEngineCanServe as exc:
            return Outcome(
                state="failed", error=_problem("no-engine-can-serve", "No engine can serve this request", 422, str(exc))
            )
        except AllEnginesFailed as exc:
            return Outcome(
                state="failed",
                error=_problem("engines-unavailable", "No engine could produce the images", 503, str(exc)),
            )
        images = []
        ext_format = job["params"].get("output_format", "png")
        for image in routed.result.images[: job["n"]]:
            data = image.data
            ext = _EXTENSIONS.get(image.media_type, ext_format)
            key = f"outputs/{job_id}/{image.index}.{ext}"
            await self.blobs.put(key, data, image.media_type)
            images.append(
                StoredImage(
                    index=image.index,
                    file_id=secrets.token_urlsafe(32),
                    blob_key=key,
                    content_type=image.media_type,
                    size=len(data),
                    etag=hashlib.sha256(data).hexdigest()[:32],
                    filename=f"{job_id}-{image.index}.{ext}",
                    seed=image.seed,
                )
            )
        return Outcome(
            state="succeeded",
            engine=routed.engine,
            images=images,
            failed=dict(routed.result.failed),
            spend=routed.result.spend,
        )

    async def _engine_request(self, job: asyncpg.Record) -> EngineRequest:
        params = dict(job["params"])
        async with self.pool.acquire() as conn:
            rows = await jq.inputs(conn, job["id"])
        for row in rows:
            data = await self.blobs.get(row["blob_key"])
            url = await self._input_url(row["blob_key"])
            params[row["role"]] = ImageInput(
                data=data, media_type=row["content_type"], width=row["width"], height=row["height"], url=url
            )
        params["job_id"] = str(job["id"])
        return msgspec.convert(params, EngineRequest, from_attributes=True)

    async def _input_url(self, blob_key: str) -> str | None:
        url = await self.blobs.presigned_url(blob_key, self.settings.storage.presign_ttl_s)
        if url is None and self.signer is not None:
            url = self.signer(blob_key)
        return url
