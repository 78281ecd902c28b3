"""SQL for the retention sweeper (gateway/worker/retention.py).

Every claim runs inside the caller's batch transaction, takes at most `limit` rows oldest first
and locks them `FOR UPDATE SKIP LOCKED`, so two sweepers never take the same row. Each batch
first takes a transaction-scoped advisory lock (`try_sweep_lock`): replicas take turns instead of
racing, and nothing outlives a transaction, which keeps this working behind PgBouncer in
transaction mode.
"""

from __future__ import annotations

from uuid import UUID

import msgspec

from gateway.db import Conn

TERMINAL_STATES = ["succeeded", "failed", "canceled"]


def _count(status: str) -> int:
    """The row count of a command tag such as `DELETE 12` or `UPDATE 3`."""
    return int(status.rsplit(maxsplit=1)[-1])


class BlobRow(msgspec.Struct, frozen=True):
    """A blob the sweeper deletes, and the row that holds its key."""

    blob_key: str
    file_id: str | None = None  # an output file
    job_id: UUID | None = None  # an input of this job
    role: str | None = None


class OldJobs(msgspec.Struct, frozen=True):
    """A batch of jobs past `jobs_days`, with every blob their rows still name."""

    ids: list[UUID]
    blobs: list[str]


class JobsDeleted(msgspec.Struct, frozen=True):
    jobs: int
    files: int
    results: int
    attempts: int
    inputs: int
    reservations: int
    idempotency_keys: int


class Pending(msgspec.Struct, frozen=True):
    """What one sweep would delete now (the dry run)."""

    output_blobs: int
    input_blobs: int
    jobs: int
    idempotency_keys: int
    dashboard_sessions: int
    webhook_messages: int


async def try_sweep_lock(conn: Conn) -> bool:
    """The sweep lock for this transaction; False while another sweeper holds it."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_xact_lock(hashtext('gateway.retention'))"))


async def claim_expired_files(conn: Conn, limit: int) -> list[BlobRow]:
    """Output files (images and zips) past their expiry whose blob is still stored."""
    rows = await conn.fetch(
        """SELECT id, blob_key FROM files
           WHERE expires_at < now() AND blob_deleted_at IS NULL
           ORDER BY expires_at LIMIT $1
           FOR UPDATE SKIP LOCKED""",
        limit,
    )
    return [BlobRow(blob_key=r["blob_key"], file_id=r["id"]) for r in rows]


async def mark_files_swept(conn: Conn, file_ids: list[str]) -> int:
    """The tombstone: these files' blobs are gone; the rows stay so downloads still answer 410."""
    status: str = await conn.execute("UPDATE files SET blob_deleted_at = now() WHERE id = ANY($1::text[])", file_ids)
    return _count(status)


async def claim_finished_inputs(conn: Conn, limit: int) -> list[BlobRow]:
    """Inputs of finished jobs. A terminal job is never run again, so nothing will fetch them.

    job_inputs only holds inputs not swept yet (the row goes with its blob), so this stays a
    scan of a small table joined to the jobs' primary key."""
    rows = await conn.fetch(
        """SELECT i.job_id, i.role, i.blob_key FROM job_inputs i JOIN jobs j ON j.id = i.job_id
           WHERE j.state = ANY($2::text[])
           LIMIT $1
           FOR UPDATE OF i SKIP LOCKED""",
        limit,
        TERMINAL_STATES,
    )
    return [BlobRow(blob_key=r["blob_key"], job_id=r["job_id"], role=r["role"]) for r in rows]


async def delete_inputs(conn: Conn, inputs: list[BlobRow]) -> int:
    status: str = await conn.execute(
        """DELETE FROM job_inputs i USING unnest($1::uuid[], $2::text[]) AS gone (job_id, role)
           WHERE i.job_id = gone.job_id AND i.role = gone.role""",
        [i.job_id for i in inputs],
        [i.role for i in inputs],
    )
    return _count(status)


async def claim_old_jobs(conn: Conn, days: int, limit: int) -> OldJobs:
    """Finished jobs created more than `days` ago, and the blobs still named by their files and inputs."""
    rows = await conn.fetch(
        # The states are literals so that the planner can use the partial index jobs_finished_created.
        """SELECT id FROM jobs
           WHERE created_at < now() - make_interval(days => $1) AND state IN ('succeeded', 'failed', 'canceled')
           ORDER BY created_at LIMIT $2
           FOR UPDATE SKIP LOCKED""",
        days,
        limit,
    )
    ids = [r["id"] for r in rows]
    if not ids:
        return OldJobs(ids=[], blobs=[])
    blobs = await conn.fetch(
        """SELECT blob_key FROM files WHERE job_id = ANY($1::uuid[]) AND blob_deleted_at IS NULL
           UNION ALL
           SELECT blob_key FROM job_inputs WHERE job_id = ANY($1::uuid[])""",
        ids,
    )
    return OldJobs(ids=ids, blobs=[b[0] for b in blobs])


async def delete_jobs(conn: Conn, batch: OldJobs) -> JobsDeleted:
    """Every row of these jobs except what the ledger and the rollups hold.

    Ledger charges keep the job's id (a plain column, no foreign key), and usage_daily was
    summed at settlement, so both stay whole. A finished job's reservation is closed and its
    charge is in the ledger; the reservation goes with the job.
    """
    ids = batch.ids
    # Normally swept long before, after idempotency_ttl_s; here for a TTL longer than jobs_days.
    keys = await conn.execute("DELETE FROM idempotency_keys WHERE job_id = ANY($1::uuid[])", ids)
    results = await conn.execute("DELETE FROM job_results WHERE job_id = ANY($1::uuid[])", ids)
    attempts = await conn.execute("DELETE FROM job_attempts WHERE job_id = ANY($1::uuid[])", ids)
    files = await conn.execute("DELETE FROM files WHERE job_id = ANY($1::uuid[])", ids)
    inputs = await conn.execute("DELETE FROM job_inputs WHERE job_id = ANY($1::uuid[])", ids)
    reservations = await conn.execute(
        "DELETE FROM reservations WHERE job_id = ANY($1::uuid[]) AND state <> 'held'", ids
    )
    jobs = await conn.execute("DELETE FROM jobs WHERE id = ANY($1::uuid[])", ids)
    return JobsDeleted(
        jobs=_count(jobs),
        files=_count(files),
        results=_count(results),
        attempts=_count(attempts),
        inputs=_count(inputs),
        reservations=_count(reservations),
        idempotency_keys=_count(keys),
    )


async def delete_idempotency_keys(conn: Conn, ttl_s: int, limit: int) -> int:
    """Keys older than the TTL. They no longer replay (the lookup ignores them); this frees the rows."""
    status: str = await conn.execute(
        """DELETE FROM idempotency_keys k USING (
               SELECT tenant_id, key FROM idempotency_keys
               WHERE created_at <= now() - make_interval(secs => $1)
               ORDER BY created_at LIMIT $2
               FOR UPDATE SKIP LOCKED) old
           WHERE k.tenant_id = old.tenant_id AND k.key = old.key""",
        ttl_s,
        limit,
    )
    return _count(status)


async def delete_expired_sessions(conn: Conn, limit: int) -> int:
    status: str = await conn.execute(
        """DELETE FROM dashboard_sessions WHERE token_hash IN (
               SELECT token_hash FROM dashboard_sessions WHERE expires_at < now()
               ORDER BY expires_at LIMIT $1
               FOR UPDATE SKIP LOCKED)""",
        limit,
    )
    return _count(status)


async def delete_ended_webhooks(conn: Conn, days: int, limit: int) -> int:
    """Delivered or dead messages that ended more than `days` ago; pending ones are never touched."""
    status: str = await conn.execute(
        """DELETE FROM webhook_outbox WHERE id IN (
               SELECT id FROM webhook_outbox
               WHERE (delivered_at IS NOT NULL OR failed_at IS NOT NULL)
                 AND coalesce(delivered_at, failed_at) < now() - make_interval(days => $1)
               ORDER BY coalesce(delivered_at, failed_at) LIMIT $2
               FOR UPDATE SKIP LOCKED)""",
        days,
        limit,
    )
    return _count(status)


async def pending(conn: Conn, *, jobs_days: int, idempotency_ttl_s: int, webhook_days: int) -> Pending:
    """What a sweep would delete now, by the same conditions (each count an index range scan)."""
    row = await conn.fetchrow(
        """SELECT
             (SELECT count(*) FROM files WHERE expires_at < now() AND blob_deleted_at IS NULL) AS output_blobs,
             (SELECT count(*) FROM job_inputs i JOIN jobs j ON j.id = i.job_id
              WHERE j.state = ANY($4::text[])) AS input_blobs,
             (SELECT count(*) FROM jobs WHERE created_at < now() - make_interval(days => $1)
              AND state IN ('succeeded', 'failed', 'canceled')) AS jobs,
             (SELECT count(*) FROM idempotency_keys
              WHERE created_at <= now() - make_interval(secs => $2)) AS idempotency_keys,
             (SELECT count(*) FROM dashboard_sessions WHERE expires_at < now()) AS dashboard_sessions,
             (SELECT count(*) FROM webhook_outbox WHERE (delivered_at IS NOT NULL OR failed_at IS NOT NULL)
              AND coalesce(delivered_at, failed_at) < now() - make_interval(days => $3)) AS webhook_messages""",
        jobs_days,
        idempotency_ttl_s,
        webhook_days,
        TERMINAL_STATES,
    )
    assert row is not None
    return Pending(**dict(row))
