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
from typing import Any, NamedTuple
from uuid import UUID

import asyncpg
import msgspec

from gateway.billing.batching import AdmissionBatcher, SettlementBatcher
from gateway.billing.gate import WalletGate
from gateway.billing.settlement import Outcome, Settled, Settlement, StoredImage, settlement_args, settlement_from_row
from gateway.config import Settings
from gateway.db import jobs as jq
from gateway.db.pool import Pool
from gateway.domain.generation import EngineAttempt, EngineRequest, GenerationParams, ImageInput
from gateway.metrics import Metrics
from gateway.observability import context
from gateway.observability.context import LogFields
from gateway.observability.tracing import Attributes, current_context, link_to, span
from gateway.routing.errors import AllEnginesFailed, NoEngineCanServe, RequestRejected
from gateway.routing.router import Router
from gateway.storage.base import BlobStore
from gateway.storage.formats import needs_conversion, to_output_format
from gateway.worker.drain import drain
from gateway.worker.outage import Cleanup, fail_when_reachable

log = logging.getLogger(__name__)

MAX_RUNS = 3
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


def _problem(slug: str, title: str, status: int, detail: str) -> dict[str, Any]:
    return {"type": f"https://gateway.invalid/problems/{slug}", "title": title, "status": status, "detail": detail}


class Finished(NamedTuple):
    """A job as its settlement left it, with its results and attempts (rows as the API views read them)."""

    job: asyncpg.Record
    results: list[dict[str, Any]]
    attempts: list[dict[str, Any]]


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
        gate: WalletGate | None = None,
    ) -> None:
        self.pool = pool
        # Shared with admission (Services.runner.gate): one wallet statement per tenant at a time.
        self.gate = gate or WalletGate()
        # Settlements that wait together (at a tenant's gate, then for a lane) go in one statement.
        # With no other job running here, nobody could join a statement: it runs at once (batching.py).
        self.settlements = SettlementBatcher(pool, self.gate, quiet=lambda: len(self._tasks) <= 1)
        self.admissions = AdmissionBatcher(pool, self.gate, quiet=lambda: not self._tasks)
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
        self._starved = False  # the claim loop waits for a slot to free up
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
        await drain(self._tasks, drain_s)
        if self._listener is not None:
            await self._listener.close()

    async def _claim_loop(self) -> None:
        while not self._stopping.is_set():
            free = self._free_slots()
            self._starved = not free
            if free:
                try:
                    async with self.pool.acquire() as conn:
                        rows = await jq.claim_jobs(conn, self.owner, self.settings.lease_s, free)
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    # The database restarting: keep polling; the claim loop must outlive the outage.
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

    def spawn(self, row: asyncpg.Record) -> asyncio.Task[Finished | None]:
        """Run a claimed job in the background; the returned task ends when it is settled."""
        task = asyncio.create_task(self.execute(row), name=f"job-{row['id']}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(self._slot_freed)
        return task

    def fail_after_outage(self, job_id: UUID, cleanup: Cleanup | None = None) -> None:
        """Settle `job_id` as failed, charging nothing, once the database answers again (after
        running `cleanup`, the caller's own undoing, on a connection).

        Its request was answered with an error (the database went away while it was being
        served), so the tenant never got the job: it must not run on and be charged later. A
        runner that finishes it meanwhile finds it settled and discards its images."""
        outcome = Outcome(
            state="failed",
            error=_problem(
                "database-unavailable",
                "Database unavailable",
                503,
                "The database became unreachable while the request was answered; "
                "the job was stopped and costs nothing.",
            ),
        )

        async def settle(job: asyncpg.Record) -> None:
            await self._settle(job, outcome, unless_canceled=False)

        task = asyncio.create_task(
            fail_when_reachable(self.pool, job_id, settle, self._stopping, cleanup), name=f"fail-{job_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _slot_freed(self, _: asyncio.Task[Finished | None]) -> None:
        # Wake the claim loop only when it stopped for want of a slot: waking it after every job
        # (every sync request) cost a claim query each time.
        if self._starved:
            self._wake.set()

    # -- one job ------------------------------------------------------------------------

    async def execute(self, job: asyncpg.Record) -> Finished | None:
        """Run one job we hold the lease on, then settle it (exactly once, whoever finishes).

        Returns the job as this settlement left it when that is the whole story (a first run that
        succeeded), so a sync request can answer without reading the job back; otherwise None.

        Its log lines carry the job, its tenant and the id of the request that created it. Its span
        is a child of that request's when the request waits for it (sync), else the root of a trace
        of its own that links to the request's span."""
        fields = LogFields(request_id=job["request_id"], tenant_id=str(job["tenant_id"]), job_id=str(job["id"]))
        token = context.start(fields)
        try:
            links = link_to(job["traceparent"]) if current_context() is None else None
            attributes: Attributes = {
                "gateway.job_id": fields.job_id,
                "gateway.tenant_id": fields.tenant_id,
                "gateway.request_id": fields.request_id,
                "gateway.operation": job["operation"],
                "gateway.job.run": job["runs"],
            }
            with span("job.run", attributes, links=links):
                return await self._execute(job)
        finally:
            context.finish(token)

    async def _execute(self, job: asyncpg.Record) -> Finished | None:
        job_id: UUID = job["id"]
        progress = {"value": 0.0, "written": 0.0}
        lost = asyncio.Event()
        run = asyncio.create_task(self._run(job, progress, lost))
        keeper: asyncio.Task[None] | None = None
        try:
            # Most jobs end before their lease needs renewing (a sync request's usually does), so the
            # keeper starts only for one that has not: a task, its steps and its cancellation fewer per job.
            done, _ = await asyncio.wait({run}, timeout=self._renew_every)
            if not done:
                keeper = asyncio.create_task(self._keep_lease(job_id, progress, lost))
                # The keeper ends early only when the lease is lost or the job was canceled: then the
                # engine call is abandoned at once (engines cancel their vendor job on cancellation).
                both: set[asyncio.Task[Any]] = {run, keeper}
                ended, _ = await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
                if keeper in ended:
                    error = keeper.exception()
                    if error is None:
                        run.cancel()
                    elif not run.done():  # a database hiccup is no reason to drop the work; the lease may still hold
                        log.warning("renewing the lease of job %s failed: %s", job_id, error)
            outcome = await run
        except asyncio.CancelledError:
            if not run.cancelled():
                raise  # we ourselves are being cancelled (shutdown): the lease covers the job
            outcome = Outcome(state="canceled")
        except Exception as exc:  # a bug must not leave the reservation open forever
            log.exception("job %s crashed", job_id)
            outcome = Outcome(state="failed", error=_problem("internal-error", "Internal error", 500, str(exc)))
        finally:
            # The run unless it ended (its outcome was read above) and the keeper if one started are
            # cancelled and awaited: no task outlives its job, and no error is left unread.
            leftover: list[asyncio.Task[Any]] = [] if run.done() else [run]
            if keeper is not None:
                leftover.append(keeper)
            for task in leftover:
                task.cancel()
            if leftover:
                await asyncio.gather(*leftover, return_exceptions=True)
        if lost.is_set():
            await self._discard(job_id, outcome)
            return None
        # The settlement statement itself checks for a cancellation request: no extra round trip.
        try:
            settlement = await self._settle(job, outcome, unless_canceled=True)
        except BaseException:
            # Unsettled (the database went away): the job runs again under a new lease, or is
            # failed by `fail_after_outage`; this run's images would belong to nothing.
            for image in outcome.images:
                await self.blobs.delete(image.blob_key)
            raise
        settled = settlement.status
        if settled is Settled.CANCEL_REQUESTED:
            await self._discard(job_id, outcome)
            outcome = Outcome(
                state="canceled",
                engine=outcome.engine,
                spend=outcome.spend,
                error=_problem("canceled", "Canceled", 409, "The job was canceled."),
            )
            settlement = await self._settle(job, outcome, unless_canceled=False)
            settled = settlement.status
        if settled is not Settled.SETTLED:
            await self._discard(job_id, outcome)
            return None
        self.metrics.jobs_finished.labels(job["operation"], outcome.state).inc()
        if outcome.images:
            self.metrics.images_produced.labels(job["operation"], outcome.engine or "none").inc(len(outcome.images))
        # Only a first run's success is known whole here: an earlier run's attempts, or failed ones
        # of a crashed run, are in the database only.
        if outcome.state != "succeeded" or job["runs"] != 1 or settlement.job is None:
            return None
        return Finished(
            job=settlement.job,
            results=[msgspec.structs.asdict(r) for r in settlement.results],
            attempts=[msgspec.structs.asdict(a) for a in outcome.history],
        )

    async def make_durable(self, job_id: UUID) -> None:
        """Renew a running job's lease now. That commit waits for its WAL flush, so the job's sync
        admission, which did not (gateway/db/generations.py), is durable when this returns; a job
        that is no longer ours was made durable by whoever took or settled it."""
        async with self.pool.acquire() as conn:
            await jq.renew_lease_or_cancel(conn, job_id, self.owner, self.settings.lease_s)

    async def _settle(self, job: asyncpg.Record, outcome: Outcome, *, unless_canceled: bool) -> Settlement:
        attributes: Attributes = {"gateway.job.state": outcome.state, "gateway.images": len(outcome.images)}
        with span("billing.settlement", attributes) as current:
            settlement = await self._settle_statement(job, outcome, unless_canceled=unless_canceled)
            current.set_attribute("gateway.settlement.status", settlement.status.value)
            return settlement

    async def _settle_statement(self, job: asyncpg.Record, outcome: Outcome, *, unless_canceled: bool) -> Settlement:
        args = settlement_args(
            job["id"],
            job["unit_price"],
            job["n"],
            outcome,
            file_ttl_s=self.settings.file_ttl_s,
            unless_canceled=unless_canceled,
        )
        row = await self.settlements.settle(job["tenant_id"], args)
        return settlement_from_row(row, args)

    async def _discard(self, job_id: UUID, outcome: Outcome) -> None:
        """Drop an outcome that will not be settled; its engine attempts still belong to the history."""
        for image in outcome.images:
            await self.blobs.delete(image.blob_key)
        outcome.images = []
        await self._record_attempts(job_id, outcome.attempts)
        outcome.attempts = []

    async def _record_attempts(self, job_id: UUID, attempts: list[EngineAttempt]) -> None:
        if not attempts:
            return
        async with self.pool.acquire() as conn:
            for attempt in attempts:
                await jq.insert_attempt(conn, job_id, attempt)

    @property
    def _renew_every(self) -> float:
        """Seconds between lease renewals (and progress writes) of a running job."""
        return min(self.settings.lease_s / 3, 0.5)

    async def _keep_lease(self, job_id: UUID, progress: dict[str, float], lost: asyncio.Event) -> None:
        """Renew the lease now and then every `_renew_every`, writing progress as it goes."""
        while True:
            async with self.pool.acquire() as conn:
                if progress["value"] > progress["written"]:
                    await jq.set_progress(conn, job_id, progress["value"])
                    progress["written"] = progress["value"]
                held, cancel = await jq.renew_lease_or_cancel(conn, job_id, self.owner, self.settings.lease_s)
                if not held:
                    lost.set()
                    return
                if cancel:
                    return  # execute() stops the run and settles the job as canceled
            await asyncio.sleep(self._renew_every)

    async def _run(self, job: asyncpg.Record, progress: dict[str, float], lost: asyncio.Event) -> Outcome:
        job_id: UUID = job["id"]
        if job["cancel_requested"]:  # canceled while queued, or after its last runner died
            return Outcome(state="canceled")
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

        # A successful attempt ends the run: it is written by the settlement statement, a moment later,
        # saving a round trip and a commit. Failed ones are written at once, so a long fallback chain
        # shows its history while it runs.
        finished: list[EngineAttempt] = []

        async def on_attempt(attempt: EngineAttempt) -> None:
            if attempt.outcome in ("succeeded", "partial"):
                finished.append(attempt)
                return
            async with self.pool.acquire() as conn:
                await jq.insert_attempt(conn, job_id, attempt)

        def on_progress(fraction: float) -> None:
            progress["value"] = max(progress["value"], min(1.0, fraction))

        try:
            try:
                routed = await self.router.run(
                    request,
                    deadline=time.monotonic() + remaining,
                    allow=job["allowed_engines"],
                    on_attempt=on_attempt,
                    progress=on_progress,
                )
            except BaseException:
                await self._record_attempts(job_id, finished)
                raise
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
        # Keys of this run's own: a runner that lost its lease but finishes anyway must not
        # overwrite, or on discarding delete, the images of the runner that settled the job.
        run = secrets.token_hex(8)
        for image in routed.result.images[: job["n"]]:
            # Engines answer in their own format; the tenant gets the one it asked for. Re-encoding
            # takes a thread; an image already in that format does not pay for the hop (~80 µs CPU).
            if needs_conversion(image.media_type, ext_format):
                data, media_type = await asyncio.to_thread(to_output_format, image.data, image.media_type, ext_format)
            else:
                data, media_type = image.data, image.media_type
            ext = _EXTENSIONS.get(media_type, ext_format)
            key = f"outputs/{job_id}/{run}-{image.index}.{ext}"
            try:
                await self.blobs.put(key, data, media_type)
            except BaseException:
                await self._record_attempts(job_id, finished)
                raise
            images.append(
                StoredImage(
                    index=image.index,
                    file_id=secrets.token_urlsafe(32),
                    blob_key=key,
                    content_type=media_type,
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
            attempts=finished,
            history=list(routed.attempts),
        )

    async def _engine_request(self, job: asyncpg.Record) -> EngineRequest:
        inputs: dict[str, ImageInput] = {}
        rows: list[asyncpg.Record] = []
        if job["operation"] != "text-to-image":  # the only operation without input images
            async with self.pool.acquire() as conn:
                rows = await jq.inputs(conn, job["id"])
        for row in rows:
            data = await self.blobs.get(row["blob_key"])
            url = await self._input_url(row["blob_key"], job["deadline_at"].timestamp())
            inputs[row["role"]] = ImageInput(
                data=data, media_type=row["content_type"], width=row["width"], height=row["height"], url=url
            )
        params = GenerationParams.from_stored(job["params"])
        return params.engine_request(str(job["id"]), image=inputs.get("image"), mask=inputs.get("mask"))

    async def _input_url(self, blob_key: str, deadline: float) -> str | None:
        url = await self.blobs.presigned_url(blob_key, self.settings.storage.presign_ttl_s)
        if url is None and self.signer is not None:
            # The gateway's own URL (gateway/storage/links.py) lives no longer than the job may.
            url = self.signer(blob_key, deadline)
        return url
