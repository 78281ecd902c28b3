"""Response Structs shared by several resources, and how they are built from rows."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec

from gateway.db import Conn
from gateway.db import generations as gq
from gateway.domain.jobs import JobState
from gateway.domain.money import to_credits


class ResultView(msgspec.Struct, kw_only=True, omit_defaults=True):
    index: int
    status: str
    file_id: str | None = None
    url: str | None = None
    seed: int | None = None
    error: str | None = None


class AttemptView(msgspec.Struct, kw_only=True, omit_defaults=True):
    engine: str
    outcome: str
    latency_ms: int
    images: int = 0
    error_class: str | None = None
    error: str | None = None
    # What the engine was sent, in the request's field names: a field it does not take is absent.
    received: dict[str, Any] | None = None


class JobView(msgspec.Struct, kw_only=True):
    id: UUID
    object: str = "job"
    operation: str
    state: JobState
    progress: float
    n: int
    images_succeeded: int
    unit_price: float
    charged: float
    engine: str | None
    download_protected: bool
    results: list[ResultView]
    # Every image in one download (same password rules), once the job has more than one.
    zip_url: str | None = None
    attempts: list[AttemptView]
    error: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    # The X-Request-Id of the request that created the job (its logs and trace are found by it).
    request_id: str | None = None


def job_view(job: Any, results: list[Any], attempts: list[Any]) -> JobView:
    """A job as the API shows it; file URLs are relative to the API root."""
    files = sum(1 for r in results if r["file_id"])
    return JobView(
        id=job["id"],
        operation=job["operation"],
        state=job["state"],
        progress=round(float(job["progress"]), 4),
        n=job["n"],
        images_succeeded=job["images_succeeded"],
        unit_price=to_credits(job["unit_price"]),
        charged=to_credits(job["charged"]),
        engine=job["engine"],
        download_protected=job["download_password_hash"] is not None,
        results=[
            ResultView(
                index=r["index"],
                status=r["status"],
                file_id=r["file_id"],
                url=f"/v1/files/{r['file_id']}" if r["file_id"] else None,
                seed=r["seed"],
                error=r["error"],
            )
            for r in results
        ],
        zip_url=f"/v1/jobs/{job['id']}/files.zip" if files > 1 else None,
        attempts=[
            AttemptView(
                engine=a["engine"],
                outcome=a["outcome"],
                latency_ms=a["latency_ms"],
                images=a["images"],
                error_class=a["error_class"],
                error=a["error"],
                received=a.get("received"),
            )
            for a in attempts
        ],
        error=job["error"],
        created_at=job["created_at"],
        started_at=job["started_at"],
        finished_at=job["finished_at"],
        request_id=job["request_id"],
    )


async def load_job_view(conn: Conn, job_id: UUID, tenant_id: UUID) -> JobView | None:
    """The job with its results and attempts (one round trip), or None when it is not this tenant's."""
    found = await gq.job_with_details(conn, job_id, tenant_id)
    return None if found is None else job_view(*found)
