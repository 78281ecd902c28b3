"""GET /v1/jobs, GET /v1/jobs/{id}, POST /v1/jobs/{id}/cancel."""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

import msgspec
from litestar import get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, QueryParameter

from gateway.api.cursors import decode_cursor, encode_cursor
from gateway.api.views import JobView, job_view, load_job_view
from gateway.auth.keys import Principal
from gateway.billing.settlement import Outcome, settle
from gateway.db import jobs as jq
from gateway.domain.jobs import JobState
from gateway.errors import NotFound
from gateway.state import Services


class JobPage(msgspec.Struct, kw_only=True):
    data: list[JobView]
    next_cursor: str | None


@get("/v1/jobs/{job_id:uuid}", tags=["jobs"], opt={"scope": "jobs:read"})
async def get_job(
    services: NamedDependency[Services], principal: NamedDependency[Principal], job_id: FromPath[UUID]
) -> JobView:
    """One job with its per-image results and engine attempts."""
    async with services.pool.acquire() as conn:
        view = await load_job_view(conn, job_id, principal.tenant_id)
    if view is None:
        raise NotFound("No such job.")
    return view


@get("/v1/jobs", tags=["jobs"], opt={"scope": "jobs:read"})
async def list_jobs(
    *,
    services: NamedDependency[Services],
    principal: NamedDependency[Principal],
    job_state: Annotated[JobState | None, QueryParameter(name="state")] = None,
    operation: FromQuery[Literal["text-to-image", "image-to-image", "inpaint"] | None] = None,
    cursor: FromQuery[str | None] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
) -> JobPage:
    """Newest first; pass `next_cursor` back as `cursor` for the next page."""
    assert principal.tenant_id is not None
    before = decode_cursor(cursor) if cursor else None
    async with services.pool.acquire() as conn:
        rows = await jq.list_jobs(
            conn, principal.tenant_id, before=before, state=job_state, operation=operation, limit=limit + 1
        )
        views = [
            job_view(r, await jq.job_results(conn, r["id"]), await jq.job_attempts(conn, r["id"])) for r in rows[:limit]
        ]
    more = len(rows) > limit
    last = rows[limit - 1] if more else None
    return JobPage(data=views, next_cursor=encode_cursor(last["created_at"], last["id"]) if last else None)


@post("/v1/jobs/{job_id:uuid}/cancel", tags=["jobs"], opt={"scope": "generate"}, status_code=200)
async def cancel_job(
    services: NamedDependency[Services], principal: NamedDependency[Principal], job_id: FromPath[UUID]
) -> JobView:
    """Cancel a job. A queued job is canceled at once; a running one when its engine returns.
    A canceled job costs nothing. Canceling a finished job changes nothing."""
    assert principal.tenant_id is not None
    async with services.pool.acquire() as conn:
        row = await jq.request_cancel(conn, job_id, principal.tenant_id)
        if row is None:
            raise NotFound("No such job.")
        job = await jq.get_job(conn, job_id, principal.tenant_id)
    assert job is not None
    if job["state"] == "queued" or (job["state"] == "running" and job["lease_expires_at"] is None):
        await settle(
            services.pool,
            job_id,
            job["unit_price"],
            job["n"],
            Outcome(
                state="canceled",
                error={
                    "type": "https://gateway.invalid/problems/canceled",
                    "title": "Canceled",
                    "status": 409,
                    "detail": "The job was canceled.",
                },
            ),
            file_ttl_s=services.settings.file_ttl_s,
        )
    async with services.pool.acquire() as conn:
        view = await load_job_view(conn, job_id, principal.tenant_id)
    assert view is not None
    return view


routes = [get_job, list_jobs, cancel_job]
