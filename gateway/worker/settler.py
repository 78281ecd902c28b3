"""A run's hand-off to the settlement statement (gateway/billing/settlement.py), and what the
runner does with its answer: a job whose cancellation was requested meanwhile is settled as
canceled, and an outcome that is not settled (someone else closed the books first) is discarded,
its images deleted and its engine attempts kept for the job's history.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple
from uuid import UUID

import msgspec

from gateway.billing.batching import SettlementBatcher
from gateway.billing.gate import WalletGate
from gateway.billing.settlement import Outcome, Settled, Settlement, settlement_args, settlement_from_row
from gateway.config import Settings
from gateway.db import jobs as jq
from gateway.db.pool import Pool
from gateway.db.types import Row
from gateway.domain.generation import EngineAttempt
from gateway.metrics import Metrics
from gateway.observability.tracing import Attributes, span
from gateway.storage.base import BlobStore
from gateway.worker.job_errors import canceled, stored


class Finished(NamedTuple):
    """A job as its settlement left it, with its results and attempts (rows as the API views read them)."""

    job: Row
    results: list[dict[str, Any]]
    attempts: list[dict[str, Any]]


class JobSettler:
    """Settles the runs of one runner; `quiet` says whether no other of its jobs could share a statement."""

    def __init__(
        self,
        *,
        pool: Pool,
        blobs: BlobStore,
        gate: WalletGate,
        settings: Settings,
        metrics: Metrics,
        quiet: Callable[[], bool],
    ) -> None:
        self.pool = pool
        self.blobs = blobs
        self.settings = settings
        self.metrics = metrics
        # Settlements that wait together (at a tenant's gate, then for a lane) go in one statement.
        # With no other job running here, nobody could join a statement: it runs at once (batching.py).
        self.batcher = SettlementBatcher(pool, gate, quiet=quiet)

    async def conclude(self, job: Row, outcome: Outcome) -> Finished | None:
        """Settle the outcome of a run that held its lease to the end (exactly once, whoever finishes).

        Returns the job as this settlement left it when that is the whole story (a first run that
        succeeded), so a sync request can answer without reading the job back; otherwise None."""
        # The settlement statement itself checks for a cancellation request: no extra round trip.
        try:
            settlement = await self.settle(job, outcome, unless_canceled=True)
        except BaseException:
            # Unsettled (the database went away): the job runs again under a new lease, or is
            # failed by `fail_after_outage`; this run's images would belong to nothing.
            for image in outcome.images:
                await self.blobs.delete(image.blob_key)
            raise
        if settlement.status is Settled.CANCEL_REQUESTED:
            await self.discard(job["id"], outcome)
            outcome = Outcome(state="canceled", engine=outcome.engine, spend=outcome.spend, error=stored(canceled()))
            settlement = await self.settle(job, outcome, unless_canceled=False)
        if settlement.status is not Settled.SETTLED:
            await self.discard(job["id"], outcome)
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

    async def settle(self, job: Row, outcome: Outcome, *, unless_canceled: bool) -> Settlement:
        """One settlement attempt, in a statement shared with those waiting beside it."""
        attributes: Attributes = {"gateway.job.state": outcome.state, "gateway.images": len(outcome.images)}
        with span("billing.settlement", attributes) as current:
            args = settlement_args(
                job["id"],
                job["unit_price"],
                job["n"],
                outcome,
                file_ttl_s=self.settings.file_ttl_s,
                unless_canceled=unless_canceled,
            )
            row = await self.batcher.settle(job["tenant_id"], args)
            settlement = settlement_from_row(row, args)
            current.set_attribute("gateway.settlement.status", settlement.status.value)
            return settlement

    async def discard(self, job_id: UUID, outcome: Outcome) -> None:
        """Drop an outcome that will not be settled; its engine attempts still belong to the history."""
        for image in outcome.images:
            await self.blobs.delete(image.blob_key)
        outcome.images = []
        await self.record_attempts(job_id, outcome.attempts)
        outcome.attempts = []

    async def record_attempts(self, job_id: UUID, attempts: list[EngineAttempt]) -> None:
        if not attempts:
            return
        async with self.pool.acquire() as conn:
            for attempt in attempts:
                await jq.insert_attempt(conn, job_id, attempt)
