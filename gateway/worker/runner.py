"""The job runner: claims jobs (FOR UPDATE SKIP LOCKED, with a renewed lease), runs them through
the router, stores the images and settles. A NOTIFY heard on the process's one LISTEN connection
(gateway/db/notifications.Listener) wakes it as soon as a job is queued.

A runner may die at any moment: its leases expire and another runner takes the job over.
A job claimed more than `MAX_RUNS` times (it keeps killing runners) fails and is released.

A run's steps: `_preflight` (is there still something to run), `_engine_request` (the job as the
engines take it), `_route` (the engines make the images), `store_images` (gateway/worker/outputs.py),
then the settlement hand-off (gateway/worker/settler.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import Any
from uuid import UUID

from gateway.billing.batching import AdmissionBatcher
from gateway.billing.gate import WalletGate
from gateway.billing.settlement import Outcome
from gateway.config import Settings
from gateway.db import jobs as jq
from gateway.db.notifications import Listener
from gateway.db.pool import Pool
from gateway.db.types import DATABASE_ERRORS, Row
from gateway.domain.generation import EngineAttempt, EngineRequest, GenerationParams, ImageInput
from gateway.metrics import Metrics
from gateway.observability import context
from gateway.observability.context import LogFields
from gateway.observability.tracing import Attributes, current_context, link_to, span
from gateway.routing.router import RoutedResult, Router
from gateway.storage.base import BlobStore
from gateway.worker import job_errors
from gateway.worker.drain import drain
from gateway.worker.job_errors import ROUTING_FAILURES, stored
from gateway.worker.outage import Cleanup, fail_when_reachable
from gateway.worker.outputs import store_images
from gateway.worker.settler import Finished, JobSettler

log = logging.getLogger(__name__)

MAX_RUNS = 3


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
        listener: Listener | None = None,
        signer: Any = None,
        gate: WalletGate | None = None,
    ) -> None:
        self.pool = pool
        # Shared with admission (Services.runner.gate): one wallet statement per tenant at a time.
        self.gate = gate or WalletGate()
        # A settlement waits for others only while another job of ours runs (gateway/billing/batching.py).
        self.settler = JobSettler(
            pool=pool,
            blobs=blobs,
            gate=self.gate,
            settings=settings,
            metrics=metrics,
            quiet=lambda: len(self._tasks) <= 1,
        )
        self.admissions = AdmissionBatcher(pool, self.gate, quiet=lambda: not self._tasks)
        self.router = router
        self.blobs = blobs
        self.settings = settings
        self.metrics = metrics
        self.signer = signer
        self.owner = f"runner-{secrets.token_hex(6)}"
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._starved = False  # the claim loop waits for a slot to free up
        self._loop_task: asyncio.Task[None] | None = None
        # Seconds the claim loop waits for a wake-up before it claims anyway: a safety net, since
        # expired leases produce no notification and one may be missed while LISTEN reconnects.
        self.poll_s = min(1.0, settings.lease_s / 3)
        if listener is not None:
            # Registered here, before its owner starts the listener (gateway/bootstrap.py). After
            # each reconnect it calls back with None: jobs queued meanwhile went unheard, so that
            # wakes the claim loop too.
            listener.listen(jq.NOTIFY_CHANNEL, self._notified)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start claiming; the listener given to the constructor wakes the claim loop when a job is queued."""
        self._loop_task = asyncio.create_task(self._claim_loop(), name="job-runner")

    async def stop(self, drain_s: float = 10.0) -> None:
        """Stop claiming; give in-flight jobs `drain_s` to finish (their leases cover the rest)."""
        self._stopping.set()
        self._wake.set()
        if self._loop_task is not None:
            await self._loop_task
        await drain(self._tasks, drain_s)

    def _notified(self, _payload: str | None) -> None:
        self._wake.set()

    async def _claim_loop(self) -> None:
        while not self._stopping.is_set():
            free = self._free_slots()
            self._starved = not free
            if free:
                try:
                    async with self.pool.acquire() as conn:
                        rows = await jq.claim_jobs(conn, self.owner, self.settings.lease_s, free)
                except DATABASE_ERRORS as exc:
                    # The database restarting: keep polling; the claim loop must outlive the outage.
                    log.warning("claiming jobs failed: %s", exc)
                    rows = []
                for row in rows:
                    self.spawn(row)
                if rows and len(rows) == free:
                    continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_s)

    def _free_slots(self) -> int:
        return max(0, self.settings.worker_concurrency - len(self._tasks))

    def spawn(self, row: Row) -> asyncio.Task[Finished | None]:
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
        outcome = Outcome(state="failed", error=stored(job_errors.database_lost()))

        async def settle(job: Row) -> None:
            await self.settler.settle(job, outcome, unless_canceled=False)

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

    async def execute(self, job: Row) -> Finished | None:
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

    async def _execute(self, job: Row) -> Finished | None:
        job_id: UUID = job["id"]
        progress = {"value": 0.0, "written": 0.0}
        lost = asyncio.Event()
        run = asyncio.create_task(self._run(job, progress))
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
            outcome = Outcome(state="failed", error=stored(job_errors.crashed(exc)))
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
            await self.settler.discard(job_id, outcome)
            return None
        return await self.settler.conclude(job, outcome)

    async def make_durable(self, job_id: UUID) -> None:
        """Renew a running job's lease now. That commit waits for its WAL flush, so the job's sync
        admission, which did not (gateway/db/generations.py), is durable when this returns; a job
        that is no longer ours was made durable by whoever took or settled it."""
        async with self.pool.acquire() as conn:
            await jq.renew_lease_or_cancel(conn, job_id, self.owner, self.settings.lease_s)

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

    async def _run(self, job: Row, progress: dict[str, float]) -> Outcome:
        """One run of a job: the images it produced, or why there are none."""
        stopped = self._preflight(job)
        if stopped is not None:
            return stopped
        # On the router's clock, counted from before the inputs are read.
        deadline = time.monotonic() + (job["deadline_at"].timestamp() - time.time())
        request = await self._engine_request(job)
        # A successful attempt ends the run: it is written by the settlement statement, a moment later,
        # saving a round trip and a commit. Failed ones are written at once, so a long fallback chain
        # shows its history while it runs.
        finished: list[EngineAttempt] = []
        try:
            try:
                routed = await self._route(job, request, deadline, finished, progress)
                images = await store_images(
                    self.blobs, job["id"], routed.result.images[: job["n"]], output_format=request.output_format
                )
            except BaseException:
                await self.settler.record_attempts(job["id"], finished)
                raise
        except ROUTING_FAILURES as exc:
            return Outcome(state="failed", error=stored(job_errors.routing_failed(exc)))
        return Outcome(
            state="succeeded",
            engine=routed.engine,
            images=images,
            failed=dict(routed.result.failed),
            spend=routed.result.spend,
            attempts=finished,
            history=list(routed.attempts),
        )

    @staticmethod
    def _preflight(job: Row) -> Outcome | None:
        """The outcome of a job there is no point running any more; None when it may run."""
        if job["cancel_requested"]:  # canceled while queued, or after its last runner died
            return Outcome(state="canceled")
        if job["runs"] > MAX_RUNS:
            return Outcome(state="failed", error=stored(job_errors.abandoned(MAX_RUNS)))
        if job["deadline_at"].timestamp() <= time.time():
            return Outcome(state="failed", error=stored(job_errors.deadline_exceeded()))
        return None

    async def _route(
        self,
        job: Row,
        request: EngineRequest,
        deadline: float,
        finished: list[EngineAttempt],
        progress: dict[str, float],
    ) -> RoutedResult:
        """The engines make the images, falling back along the job's route; each successful
        attempt goes to `finished`, each failed one to the database."""

        async def on_attempt(attempt: EngineAttempt) -> None:
            if attempt.outcome in ("succeeded", "partial"):
                finished.append(attempt)
                return
            async with self.pool.acquire() as conn:
                await jq.insert_attempt(conn, job["id"], attempt)

        def on_progress(fraction: float) -> None:
            progress["value"] = max(progress["value"], min(1.0, fraction))

        return await self.router.run(
            request, deadline=deadline, allow=job["allowed_engines"], on_attempt=on_attempt, progress=on_progress
        )

    async def _engine_request(self, job: Row) -> EngineRequest:
        inputs: dict[str, ImageInput] = {}
        rows: list[Row] = []
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
