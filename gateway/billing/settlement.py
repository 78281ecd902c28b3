"""Settlement: ONE transaction records results, charges each success, releases the rest and
moves the job to its terminal state. Whoever closes the reservation first wins; a late runner
(its lease expired and another took over) finds it closed and discards its own outcome."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from gateway.db import billing as bq
from gateway.db import jobs as jq
from gateway.db.pool import Pool
from gateway.domain.generation import EngineSpend
from gateway.domain.jobs import JobState
from gateway.domain.money import to_credits


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


def webhook_message_id(job_id: UUID, event: str) -> str:
    """Stable per job and event, so a retried settlement never enqueues a second delivery."""
    return f"msg_{job_id.hex}_{event.replace('.', '_')}"


async def settle(pool: Pool, job_id: UUID, unit_price: int, n: int, outcome: Outcome, *, file_ttl_s: int) -> bool:
    """Close the job's books exactly once. Returns False when someone else already did."""
    succeeded = len(outcome.images) if outcome.state == "succeeded" else 0
    charge = succeeded * unit_price
    async with pool.acquire() as conn, conn.transaction():
        wallet = await bq.close_reservation(conn, job_id, charge)
        if wallet is None:
            return False
        job = await jq.finish_job(
            conn,
            job_id=job_id,
            state=outcome.state,
            engine=outcome.engine,
            images_succeeded=succeeded,
            charged=charge,
            vendor_credits=outcome.spend.vendor_credits,
            gpu_seconds=outcome.spend.gpu_seconds,
            error=outcome.error,
        )
        assert job is not None, "an open reservation means the job is unfinished"
        if outcome.state == "succeeded":
            for image in outcome.images:
                await jq.insert_file(
                    conn,
                    file_id=image.file_id,
                    tenant_id=job["tenant_id"],
                    job_id=job_id,
                    kind="image",
                    blob_key=image.blob_key,
                    content_type=image.content_type,
                    size=image.size,
                    etag=image.etag,
                    filename=image.filename,
                    ttl_s=file_ttl_s,
                )
                await jq.record_result(
                    conn,
                    job_id,
                    index=image.index,
                    status="succeeded",
                    file_id=image.file_id,
                    seed=image.seed,
                    error=None,
                )
        done = {image.index for image in outcome.images} if outcome.state == "succeeded" else set()
        reason = (outcome.error or {}).get("detail") or outcome.state
        for index in range(n):
            if index not in done:
                await jq.record_result(
                    conn,
                    job_id,
                    index=index,
                    status="failed",
                    file_id=None,
                    seed=None,
                    error=outcome.failed.get(index, str(reason)),
                )
        await jq.add_usage(
            conn,
            tenant_id=job["tenant_id"],
            operation=job["operation"],
            engine=outcome.engine or "none",
            key_id=job["api_key_id"],
            images=succeeded,
            failed_images=n - succeeded,
            charged=charge,
            vendor_credits=outcome.spend.vendor_credits,
            gpu_seconds=outcome.spend.gpu_seconds,
        )
        tenant_url = await conn.fetchval("SELECT webhook_url FROM tenants WHERE id = $1", job["tenant_id"])
        url = job["webhook_url"] or tenant_url
        if url:
            event = f"job.{outcome.state}"
            await jq.enqueue_webhook(
                conn,
                tenant_id=job["tenant_id"],
                message_id=webhook_message_id(job_id, event),
                url=url,
                event_type=event,
                payload={
                    "type": event,
                    "data": {
                        "id": str(job_id),
                        "state": outcome.state,
                        "images": succeeded,
                        "charged": to_credits(charge),
                    },
                },
            )
        threshold = wallet["low_balance_threshold"]
        available = wallet["balance"] - wallet["held"]
        if threshold is not None and available < threshold and not wallet["low_balance_notified"]:
            await bq.mark_low_balance_notified(conn, wallet["tenant_id"])
            if tenant_url:
                await jq.enqueue_webhook(
                    conn,
                    tenant_id=wallet["tenant_id"],
                    message_id=f"msg_low_{secrets.token_hex(8)}",
                    url=tenant_url,
                    event_type="balance.low",
                    payload={
                        "type": "balance.low",
                        "data": {"available": to_credits(available), "threshold": to_credits(threshold)},
                    },
                )
    return True
