"""SQL for jobs, their results, attempts, files and inputs."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import asyncpg

from gateway.db import Conn, require_tenant
from gateway.domain.generation import EngineAttempt

NOTIFY_CHANNEL = "gateway_jobs"

JOB_COLUMNS = """id, tenant_id, api_key_id, operation, state, params, n, unit_price, price_version_id, allowed_engines,
    progress, engine, vendor_credits, gpu_seconds, images_succeeded, charged, error, download_password_hash,
    webhook_url, cancel_requested, runs, lease_owner, lease_expires_at, deadline_at, created_at, started_at,
    finished_at, request_id, traceparent"""


async def inputs(conn: Conn, job_id: UUID) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT role, blob_key, content_type, width, height FROM job_inputs WHERE job_id = $1", job_id
    )


async def claim_jobs(conn: Conn, owner: str, lease_s: float, limit: int) -> list[asyncpg.Record]:
    """Take up to `limit` queued jobs, or running jobs whose lease expired (their runner died)."""
    return await conn.fetch(
        f"""UPDATE jobs SET state = 'running', lease_owner = $1, lease_expires_at = now() + make_interval(secs => $2),
                           started_at = coalesce(started_at, now()), runs = runs + 1, updated_at = now()
           WHERE id IN (
               SELECT id FROM jobs
               WHERE (state = 'queued') OR (state = 'running' AND lease_expires_at < now())
               ORDER BY created_at
               LIMIT $3
               FOR UPDATE SKIP LOCKED)
           RETURNING {JOB_COLUMNS}""",  # noqa: S608 - column list is a constant
        owner,
        lease_s,
        limit,
    )


async def renew_lease_or_cancel(conn: Conn, job_id: UUID, owner: str, lease_s: float) -> tuple[bool, bool]:
    """Extend our lease; returns (still ours, cancel requested) so a runner stops a canceled job."""
    row = await conn.fetchrow(
        """UPDATE jobs SET lease_expires_at = now() + make_interval(secs => $3)
           WHERE id = $1 AND lease_owner = $2 AND state = 'running' RETURNING cancel_requested""",
        job_id,
        owner,
        lease_s,
    )
    if row is None:
        return False, False
    return True, bool(row["cancel_requested"])


async def job_status(conn: Conn, job_id: UUID, tenant_id: UUID) -> asyncpg.Record | None:
    """The few columns an event stream compares between notifications (cheap: one row by key);
    None when the job is not `tenant_id`'s."""
    return await conn.fetchrow(
        "SELECT id, state, progress, images_succeeded FROM jobs WHERE id = $1 AND tenant_id = $2",
        job_id,
        require_tenant(tenant_id),
    )


async def set_progress(conn: Conn, job_id: UUID, progress: float) -> None:
    await conn.execute(
        "UPDATE jobs SET progress = greatest(progress, $2) WHERE id = $1 AND state = 'running'", job_id, progress
    )


async def insert_attempt(conn: Conn, job_id: UUID, attempt: EngineAttempt) -> None:
    await conn.execute(
        """INSERT INTO job_attempts (job_id, engine, outcome, latency_ms, error_class, error, images, received)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
        job_id,
        attempt.engine,
        attempt.outcome,
        attempt.latency_ms,
        attempt.error_class,
        attempt.error,
        attempt.images,
        attempt.received,
    )


async def get_job(conn: Conn, job_id: UUID, tenant_id: UUID) -> asyncpg.Record | None:
    """The job when it belongs to `tenant_id` (another tenant's gets None, so 404)."""
    return await conn.fetchrow(
        f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1 AND tenant_id = $2",  # noqa: S608
        job_id,
        require_tenant(tenant_id),
    )


async def get_job_of_any_tenant(conn: Conn, job_id: UUID) -> asyncpg.Record | None:
    """The job whoever's it is: for the gateway's own work on it (the runner, signed input URLs),
    never for an answer to a tenant."""
    return await conn.fetchrow(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1", job_id)  # noqa: S608


async def details_of(
    conn: Conn, job_ids: list[UUID]
) -> tuple[dict[UUID, list[asyncpg.Record]], dict[UUID, list[asyncpg.Record]]]:
    """Results (by index) and attempts (in order) of many jobs, in two queries whatever their number."""
    results: dict[UUID, list[asyncpg.Record]] = {job_id: [] for job_id in job_ids}
    attempts: dict[UUID, list[asyncpg.Record]] = {job_id: [] for job_id in job_ids}
    for row in await conn.fetch(
        """SELECT job_id, index, status, file_id, seed, error FROM job_results
           WHERE job_id = ANY($1::uuid[]) ORDER BY job_id, index""",
        job_ids,
    ):
        results[row["job_id"]].append(row)
    for row in await conn.fetch(
        """SELECT job_id, engine, outcome, latency_ms, error_class, error, images, received FROM job_attempts
           WHERE job_id = ANY($1::uuid[]) ORDER BY job_id, id""",
        job_ids,
    ):
        attempts[row["job_id"]].append(row)
    return results, attempts


async def list_jobs(
    conn: Conn,
    tenant_id: UUID,
    *,
    before: tuple[datetime, UUID] | None,
    state: str | None,
    operation: str | None,
    limit: int,
) -> list[asyncpg.Record]:
    """Newest first, keyset-paginated on (created_at, id) (uses jobs_tenant_page, or
    jobs_tenant_state_page with a state filter).

    The cursor is always an index bound and the state test is spliced in, not `$n IS NULL OR ...`:
    the generic plan PostgreSQL adopts for a prepared statement could otherwise use neither, and
    walk every job of the tenant up to the page."""
    state_test = "state = $4" if state is not None else "$4::text IS NULL"
    return await conn.fetch(
        f"""SELECT {JOB_COLUMNS} FROM jobs
            WHERE tenant_id = $1
              AND (created_at, id) < (coalesce($2::timestamptz, 'infinity'),
                                      coalesce($3::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
              AND {state_test}
              AND ($5::text IS NULL OR operation = $5)
            ORDER BY created_at DESC, id DESC LIMIT $6""",  # noqa: S608
        require_tenant(tenant_id),
        before[0] if before else None,
        before[1] if before else None,
        state,
        operation,
        limit,
    )


async def request_cancel(conn: Conn, job_id: UUID, tenant_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """UPDATE jobs SET cancel_requested = true, updated_at = now()
           WHERE id = $1 AND tenant_id = $2 RETURNING state""",
        job_id,
        require_tenant(tenant_id),
    )


async def insert_file(
    conn: Conn,
    *,
    file_id: str,
    tenant_id: UUID,
    job_id: UUID,
    kind: str,
    blob_key: str,
    content_type: str,
    size: int,
    etag: str,
    filename: str,
    ttl_s: int,
) -> None:
    await conn.execute(
        """INSERT INTO files (id, tenant_id, job_id, kind, blob_key, content_type, size, etag, filename, expires_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now() + make_interval(secs => $10))""",
        file_id,
        tenant_id,
        job_id,
        kind,
        blob_key,
        content_type,
        size,
        etag,
        filename,
        ttl_s,
    )
