"""GET /v1/jobs, GET /v1/jobs/{id}, POST /v1/jobs/{id}/cancel, GET /v1/jobs/{id}/events (SSE)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from litestar import Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from gateway.api.cursors import CreatedAtKey, decode_cursor, encode_cursor
from gateway.api.views import JobView, job_view, load_job_view
from gateway.auth import tokens
from gateway.auth.keys import Principal, presented_key
from gateway.billing.settlement import Outcome, settle
from gateway.db import jobs as jq
from gateway.db.notifications import JobWatchers
from gateway.domain.jobs import TERMINAL, JobState
from gateway.errors import NotFound, Unauthenticated
from gateway.state import Services
from gateway.worker.job_errors import canceled, stored


class JobPage(msgspec.Struct, kw_only=True):
    data: list[JobView]
    next_cursor: str | None


@get(
    "/v1/jobs/{job_id:uuid}",
    operation_id="getJob",
    summary="Get a job",
    tags=["jobs"],
    opt={"scope": "jobs:read", "problems": {404: "No such job."}},
)
async def get_job(
    services: NamedDependency[Services], principal: NamedDependency[Principal], job_id: FromPath[UUID]
) -> JobView:
    """One job with its per-image results and engine attempts."""
    async with services.pool.acquire() as conn:
        view = await load_job_view(conn, job_id, principal.tenant)
    if view is None:
        raise NotFound("No such job.")
    return view


@get(
    "/v1/jobs",
    operation_id="listJobs",
    summary="List jobs",
    tags=["jobs"],
    opt={"scope": "jobs:read", "problems": {422: "A parameter is invalid, or `cursor` is not one this API returned."}},
)
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
    before = decode_cursor(cursor, CreatedAtKey).pair() if cursor else None
    async with services.pool.acquire() as conn:
        rows = await jq.list_jobs(
            conn, principal.tenant, before=before, state=job_state, operation=operation, limit=limit + 1
        )
        page = rows[:limit]
        results, attempts = await jq.details_of(conn, [r["id"] for r in page])
        views = [job_view(r, results[r["id"]], attempts[r["id"]]) for r in page]
    more = len(rows) > limit
    last = rows[limit - 1] if more else None
    return JobPage(
        data=views, next_cursor=encode_cursor(CreatedAtKey(last["created_at"], last["id"])) if last else None
    )


@post(
    "/v1/jobs/{job_id:uuid}/cancel",
    operation_id="cancelJob",
    summary="Cancel a job",
    tags=["jobs"],
    opt={"scope": "generate", "problems": {404: "No such job."}},
    status_code=200,
)
async def cancel_job(
    services: NamedDependency[Services], principal: NamedDependency[Principal], job_id: FromPath[UUID]
) -> JobView:
    """Cancel a job. A queued job (or one whose runner died) is canceled at once; a running one
    within about a second: its runner abandons the engine call (the vendor's job is canceled too)
    and discards any images already made. A canceled job costs nothing; its reservation is
    released. Canceling a finished job changes nothing."""
    async with services.pool.acquire() as conn:
        row = await jq.request_cancel(conn, job_id, principal.tenant)
        if row is None:
            raise NotFound("No such job.")
        job = await jq.get_job(conn, job_id, principal.tenant)
    assert job is not None
    orphaned = job["state"] == "running" and (
        job["lease_expires_at"] is None or job["lease_expires_at"] < datetime.now(UTC)
    )
    if job["state"] == "queued" or orphaned:
        await settle(
            services.pool,
            job_id,
            job["unit_price"],
            job["n"],
            Outcome(state="canceled", error=stored(canceled())),
            file_ttl_s=services.settings.file_ttl_s,
        )
    async with services.pool.acquire() as conn:
        view = await load_job_view(conn, job_id, principal.tenant)
    assert view is not None
    return view


class JobStatus(msgspec.Struct, kw_only=True):
    """One `status` event of a job's event stream."""

    id: UUID
    state: JobState
    progress: float
    images_succeeded: int


# Browsers' EventSource reconnects after a dropped stream; ask it to wait this long (ms) first.
_RETRY_MS = 2000


async def _key_still_valid(services: Services, key_hash: bytes) -> bool:
    """Whether the key a stream was opened with still authenticates (not revoked, expired, rotated
    out or suspended): the same rules and lookup cache as a new request's."""
    try:
        await services.auth.authenticate_hash("tenant", key_hash)
    except Unauthenticated:
        return False
    return True


async def job_event_stream(
    services: Services, watchers: JobWatchers, job_id: UUID, tenant_id: UUID, key_hash: bytes
) -> AsyncIterator[ServerSentEventMessage]:
    """`status` on every change of state or progress, then `done` with the terminal job view.

    The stream re-reads the job's row when the database says it changed (LISTEN/NOTIFY, see
    gateway/db/notifications.py) and, as a safety net, on every keep-alive tick. Before each read it
    checks that the key it was opened with (`key_hash`) still authenticates, and ends when it no
    longer does: revoking a key cuts off its open streams within a keep-alive interval."""
    keepalive_s = services.settings.sse_keepalive_s
    sequence = 0
    last: JobStatus | None = None
    with watchers.watch(job_id) as changed:
        while True:
            changed.clear()  # before reading, so a change committed during the read wakes us again
            if not await _key_still_valid(services, key_hash):
                return
            async with services.pool.acquire() as conn:
                row = await jq.job_status(conn, job_id, tenant_id)
            if row is None:  # cannot happen once a job exists (jobs are never deleted); end cleanly
                return
            status = JobStatus(
                id=row["id"],
                state=row["state"],
                progress=round(float(row["progress"]), 4),
                images_succeeded=row["images_succeeded"],
            )
            if status != last:
                sequence += 1
                yield ServerSentEventMessage(
                    event="status",
                    id=sequence,
                    data=msgspec.json.encode(status).decode(),
                    retry=_RETRY_MS if last is None else None,
                )
                last = status
            if status.state in TERMINAL:
                async with services.pool.acquire() as conn:
                    view = await load_job_view(conn, job_id, tenant_id)
                assert view is not None
                yield ServerSentEventMessage(event="done", id=sequence + 1, data=msgspec.json.encode(view).decode())
                return
            try:
                await asyncio.wait_for(changed.wait(), timeout=keepalive_s)
            except TimeoutError:
                yield ServerSentEventMessage(data=None, comment="keep-alive")


@get(
    "/v1/jobs/{job_id:uuid}/events",
    operation_id="streamJobEvents",
    summary="Stream a job's events",
    tags=["jobs"],
    opt={"scope": "jobs:read", "problems": {404: "No such job."}},
    media_type="text/event-stream",
    response_description="text/event-stream: `status` events ({id, state, progress, images_succeeded}) on every "
    "change, then one `done` event carrying the terminal Job; `: keep-alive` comments while idle.",
)
async def job_events(
    services: NamedDependency[Services],
    principal: NamedDependency[Principal],
    request: Request[Any, Any, Any],
    job_id: FromPath[UUID],
) -> ServerSentEvent:
    """Server-Sent Events with the job's status and progress until it finishes.

    The first event is the current status; the stream closes after the `done` event (clients
    should not reconnect after it). Works on any replica: changes are heard through the database."""
    async with services.pool.acquire() as conn:
        if await jq.job_status(conn, job_id, principal.tenant) is None:
            raise NotFound("No such job.")
    # The guard authenticated this key moments ago, so it is present and well-formed.
    key_hash = tokens.hash_key(presented_key(request.headers) or "")
    stream = job_event_stream(services, services.job_watchers, job_id, principal.tenant, key_hash)
    return ServerSentEvent(stream, headers={"Cache-Control": "no-store"})


routes = [get_job, list_jobs, cancel_job, job_events]
