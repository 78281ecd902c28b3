"""Settlement: ONE statement (its own transaction) records results, charges each success, releases the rest and
moves the job to its terminal state. Whoever closes the reservation first wins; a late runner
(its lease expired and another took over) finds it closed and discards its own outcome. The runner's
settlements that wait together, of one tenant or several, share one statement
(gateway/billing/batching.py)."""

from __future__ import annotations

import enum
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from uuid import UUID

from gateway.db import settlements as sq
from gateway.db.pool import Pool
from gateway.db.types import Row
from gateway.domain.generation import EngineAttempt, EngineSpend
from gateway.domain.jobs import JobState
from gateway.domain.money import to_credits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredImage:
    index: int
    file_id: str
    blob_key: str
    content_type: str
    size: int
    etag: str
    filename: str
    seed: int | None


@dataclass
class Outcome:
    """What a run of a job produced, before it is settled."""

    state: JobState
    engine: str | None = None
    images: list[StoredImage] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    spend: EngineSpend = field(default_factory=EngineSpend)
    error: dict[str, Any] | None = None
    # Engine attempts not yet written; the settlement statement records them with the result.
    attempts: list[EngineAttempt] = field(default_factory=list)
    # Every attempt of this run in order, written or not: a sync answer shows them without a read.
    history: list[EngineAttempt] = field(default_factory=list)


def webhook_message_id(job_id: UUID, event: str) -> str:
    """Stable per job and event, so a retried settlement never enqueues a second delivery."""
    return f"msg_{job_id.hex}_{event.replace('.', '_')}"


class Settled(enum.Enum):
    """What one settlement attempt did."""

    SETTLED = "settled"  # the books are closed with this outcome
    ALREADY_CLOSED = "already-closed"  # someone else settled the job first: discard this outcome
    CANCEL_REQUESTED = "cancel-requested"  # nothing done: the job's cancellation was requested


class Settlement(NamedTuple):
    """What one settlement attempt did; when it settled, the job as it left it and its results."""

    status: Settled
    job: Row | None = None
    results: tuple[sq.ResultRow, ...] = ()


async def settle(pool: Pool, job_id: UUID, unit_price: int, n: int, outcome: Outcome, *, file_ttl_s: int) -> bool:
    """Close the job's books exactly once. Returns False when someone else already did."""
    result = await settle_run(pool, job_id, unit_price, n, outcome, file_ttl_s=file_ttl_s, unless_canceled=False)
    return result.status is Settled.SETTLED


async def settle_run(
    pool: Pool, job_id: UUID, unit_price: int, n: int, outcome: Outcome, *, file_ttl_s: int, unless_canceled: bool
) -> Settlement:
    """Close the job's books exactly once, in one statement (gateway/db/settlements.py).

    With `unless_canceled`, a job whose cancellation was requested is left as it is and
    `CANCEL_REQUESTED` comes back, so the runner can settle it as canceled instead."""
    args = settlement_args(job_id, unit_price, n, outcome, file_ttl_s=file_ttl_s, unless_canceled=unless_canceled)
    async with pool.acquire() as conn:
        row = await sq.settle_job(conn, args)
    return settlement_from_row(row, args)


def settlement_args(
    job_id: UUID, unit_price: int, n: int, outcome: Outcome, *, file_ttl_s: int, unless_canceled: bool
) -> sq.SettleArgs:
    """The settlement statement's input for `outcome`: each stored image charged, every other index failed."""
    succeeded = len(outcome.images) if outcome.state == "succeeded" else 0
    charge = succeeded * unit_price
    stored = outcome.images if outcome.state == "succeeded" else []
    done = {image.index for image in stored}
    reason = str((outcome.error or {}).get("detail") or outcome.state)
    results = [sq.ResultRow(image.index, "succeeded", image.file_id, image.seed, None) for image in stored]
    results += [
        sq.ResultRow(index, "failed", None, None, outcome.failed.get(index, reason))
        for index in range(n)
        if index not in done
    ]
    results.sort(key=lambda r: r.index)
    files = [
        sq.FileRow(image.file_id, image.blob_key, image.content_type, image.size, image.etag, image.filename)
        for image in stored
    ]
    event = f"job.{outcome.state}"
    payload = {
        "type": event,
        "data": {"id": str(job_id), "state": outcome.state, "images": succeeded, "charged": to_credits(charge)},
    }
    return sq.SettleArgs(
        job_id=job_id,
        charge=charge,
        state=outcome.state,
        engine=outcome.engine,
        images_succeeded=succeeded,
        failed_images=n - succeeded,
        vendor_credits=outcome.spend.vendor_credits,
        gpu_seconds=outcome.spend.gpu_seconds,
        error=outcome.error,
        file_ttl_s=file_ttl_s,
        unless_cancel_requested=unless_canceled,
        files=files,
        results=results,
        event=(webhook_message_id(job_id, event), event, payload),
        low_balance_message_id=f"msg_low_{secrets.token_hex(8)}",
        attempts=outcome.attempts,
    )


def settlement_from_row(row: Row, args: sq.SettleArgs) -> Settlement:
    """What the settlement statement's row for `args` says happened."""
    if row["closed"]:
        if row["id"] is None:
            # An open reservation means the job is unfinished; `gateway billing audit` reports this too.
            log.error("job %s: reservation closed but the job was already finished", args.job_id)
            return Settlement(Settled.SETTLED)
        return Settlement(Settled.SETTLED, row, tuple(args.results))
    if args.unless_cancel_requested and row["cancel_was_requested"]:
        return Settlement(Settled.CANCEL_REQUESTED)
    return Settlement(Settled.ALREADY_CLOSED)
