"""SQL of settlement: ONE statement (its own transaction) closes a job's reservation, charges what was
produced, writes the ledger, the job's end, its files, results, usage, attempts and webhooks.

`SETTLE` settles one job. `SETTLE_MANY` settles several in one statement, of one tenant or several,
for the settlements that waited together (gateway/billing/batching.py): one executor start-up,
one commit and one WAL flush instead of one each. It does what `SETTLE` does for each job, in input
order, with what must be done once per row summed first: one wallet update per tenant, one usage
row per (tenant, day, operation, engine, key), and the ledger's running balance numbered by a window
over the jobs. Why the statements are safe under READ COMMITTED: gateway/db/generations.py.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from gateway.db import Conn, field_arrays
from gateway.db.generations import job_columns
from gateway.domain.generation import EngineAttempt
from gateway.observability.tracing import child_span, db_attributes

_RETURNED_JOB = job_columns("job")
_UPDATED_JOB = job_columns("j")

SETTLE = f"""
WITH job0 AS (
    SELECT id, cancel_requested FROM jobs WHERE id = $1
), reservation AS (
    UPDATE reservations r
    SET state = CASE WHEN $2::bigint > 0 THEN 'settled' ELSE 'released' END,
        charged = $2, released = r.amount - $2, closed_at = now()
    FROM job0
    WHERE r.job_id = $1 AND r.state = 'held' AND $2 <= r.amount AND NOT ($10 AND job0.cancel_requested)
    RETURNING r.tenant_id, r.api_key_id, r.amount
), before AS (
    SELECT w.tenant_id, w.low_balance_notified
    FROM wallets w JOIN reservation ON reservation.tenant_id = w.tenant_id
    FOR UPDATE OF w
), wallet AS (
    UPDATE wallets w
    SET balance = w.balance - $2, held = w.held - reservation.amount, active_jobs = w.active_jobs - 1,
        updated_at = now(),
        low_balance_notified = w.low_balance_notified OR coalesce(
            (w.balance - $2) - (w.held - reservation.amount) < w.low_balance_threshold, false)
    FROM reservation JOIN before ON before.tenant_id = reservation.tenant_id
    WHERE w.tenant_id = reservation.tenant_id
    RETURNING w.tenant_id, w.balance, w.held, w.low_balance_threshold,
              w.low_balance_notified AND NOT before.low_balance_notified AS crossed
), ledger AS (
    INSERT INTO ledger_entries (tenant_id, kind, amount, balance_after, job_id, api_key_id, reason)
    SELECT wallet.tenant_id, 'charge', -$2::bigint, wallet.balance, $1, reservation.api_key_id, 'images produced'
    FROM wallet, reservation
    WHERE $2 > 0
), job AS (
    UPDATE jobs j
    SET state = $3, engine = $4, images_succeeded = $5, charged = $2, vendor_credits = $6, gpu_seconds = $7,
        error = $8, progress = CASE WHEN $3 = 'succeeded' THEN 1 ELSE j.progress END,
        finished_at = now(), updated_at = now(), lease_owner = NULL, lease_expires_at = NULL
    FROM wallet
    WHERE j.id = $1 AND j.state IN ('queued', 'running')
    RETURNING {_UPDATED_JOB}
), files AS (
    INSERT INTO files (id, tenant_id, job_id, kind, blob_key, content_type, size, etag, filename, expires_at)
    SELECT f.id, job.tenant_id, $1, 'image', f.blob_key, f.content_type, f.size, f.etag, f.filename,
           now() + make_interval(secs => $9)
    FROM job, unnest($11::text[], $12::text[], $13::text[], $14::bigint[], $15::text[], $16::text[])
              AS f(id, blob_key, content_type, size, etag, filename)
), results AS (
    UPDATE job_results r SET status = x.status, file_id = x.file_id, seed = x.seed, error = x.error
    FROM job, unnest($17::int[], $18::text[], $19::text[], $20::bigint[], $21::text[])
              AS x(index, status, file_id, seed, error)
    WHERE r.job_id = $1 AND r.index = x.index
), usage AS (
    INSERT INTO usage_daily AS u (tenant_id, day, operation, engine, api_key_id, jobs, images, failed_images,
                                  charged, vendor_credits, gpu_seconds)
    SELECT job.tenant_id, (now() AT TIME ZONE 'UTC')::date, job.operation, coalesce($4, 'none'),
           coalesce(job.api_key_id, '00000000-0000-0000-0000-000000000000'::uuid), 1, $5, $22, $2, $6, $7
    FROM job
    ON CONFLICT (tenant_id, day, operation, engine, api_key_id) DO UPDATE
    SET jobs = u.jobs + 1, images = u.images + $5, failed_images = u.failed_images + $22,
        charged = u.charged + $2, vendor_credits = u.vendor_credits + $6, gpu_seconds = u.gpu_seconds + $7
), attempts AS (
    INSERT INTO job_attempts (job_id, engine, outcome, latency_ms, error_class, error, images, received)
    SELECT $1, a.engine, a.outcome, a.latency_ms, a.error_class, a.error, a.images, a.received
    FROM job, unnest($27::text[], $28::text[], $29::int[], $30::text[], $31::text[], $32::int[], $33::jsonb[])
              WITH ORDINALITY AS a(engine, outcome, latency_ms, error_class, error, images, received, ord)
    ORDER BY a.ord
), tenant AS (
    SELECT nullif(t.webhook_url, '') AS url FROM tenants t JOIN job ON job.tenant_id = t.id
), job_event AS (
    INSERT INTO webhook_outbox (tenant_id, message_id, url, event_type, payload, request_id)
    SELECT job.tenant_id, $23, coalesce(nullif(job.webhook_url, ''), tenant.url), $24, $25, job.request_id
    FROM job, tenant
    WHERE coalesce(nullif(job.webhook_url, ''), tenant.url) IS NOT NULL
    ON CONFLICT (message_id) DO NOTHING
), low_balance AS (
    INSERT INTO webhook_outbox (tenant_id, message_id, url, event_type, payload)
    SELECT wallet.tenant_id, $26, tenant.url, 'balance.low',
           jsonb_build_object('type', 'balance.low', 'data', jsonb_build_object(
               'available', trim_scale((wallet.balance - wallet.held)::numeric / 1000),
               'threshold', trim_scale(wallet.low_balance_threshold::numeric / 1000)))
    FROM wallet, tenant
    WHERE wallet.crossed AND tenant.url IS NOT NULL
    ON CONFLICT (message_id) DO NOTHING
)
SELECT (SELECT count(*) FROM reservation) AS closed,
       coalesce((SELECT cancel_requested FROM job0), false) AS cancel_was_requested, {_RETURNED_JOB}
FROM (SELECT) AS one LEFT JOIN job ON true
"""  # noqa: S608 - only constants are interpolated


SETTLE_MANY = f"""
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::text[], $5::int[], $6::int[], $7::float8[],
                         $8::float8[], $9::jsonb[], $10::bool[], $11::text[], $12::text[], $13::jsonb[], $14::text[])
         WITH ORDINALITY AS x(job_id, charge, state, engine, images, failed_images, vendor_credits, gpu_seconds,
                              error, unless_cancel, message_id, event_type, payload, low_balance_message_id, ord)
), job0 AS (
    SELECT j.id, j.cancel_requested FROM jobs j JOIN input ON input.job_id = j.id
), reservation AS (
    UPDATE reservations r
    SET state = CASE WHEN i.charge > 0 THEN 'settled' ELSE 'released' END,
        charged = i.charge, released = r.amount - i.charge, closed_at = now()
    FROM input i JOIN job0 ON job0.id = i.job_id
    WHERE r.job_id = i.job_id AND r.state = 'held' AND i.charge <= r.amount
      AND NOT (i.unless_cancel AND job0.cancel_requested)
    RETURNING r.job_id, r.tenant_id, r.api_key_id, r.amount, i.charge, i.ord
), before AS (
    SELECT w.tenant_id, w.balance, w.held, w.low_balance_notified
    FROM wallets w WHERE w.tenant_id IN (SELECT tenant_id FROM reservation)
    ORDER BY w.tenant_id
    FOR UPDATE OF w
), running AS (
    -- The wallet after each settlement in input order, as if they had run one by one.
    SELECT r.tenant_id, r.job_id, r.api_key_id, r.amount, r.charge, r.ord,
           before.balance - sum(r.charge) OVER w AS balance_after,
           before.balance - before.held + sum(r.amount - r.charge) OVER w AS available_after
    FROM reservation r JOIN before ON before.tenant_id = r.tenant_id
    WINDOW w AS (PARTITION BY r.tenant_id ORDER BY r.ord)
), totals AS (
    SELECT tenant_id, sum(charge) AS charge, sum(amount) AS amount, count(*) AS jobs,
           min(available_after) AS lowest_available
    FROM running GROUP BY tenant_id
), wallet AS (
    UPDATE wallets w
    SET balance = w.balance - totals.charge, held = w.held - totals.amount, active_jobs = w.active_jobs - totals.jobs,
        updated_at = now(),
        low_balance_notified = w.low_balance_notified
            OR coalesce(totals.lowest_available < w.low_balance_threshold, false)
    FROM totals JOIN before ON before.tenant_id = totals.tenant_id
    WHERE w.tenant_id = totals.tenant_id
    RETURNING w.tenant_id, w.low_balance_threshold,
              w.low_balance_notified AND NOT before.low_balance_notified AS crossed
), ledger AS (
    INSERT INTO ledger_entries (tenant_id, kind, amount, balance_after, job_id, api_key_id, reason)
    SELECT running.tenant_id, 'charge', -running.charge, running.balance_after, running.job_id, running.api_key_id,
           'images produced'
    FROM running JOIN wallet ON wallet.tenant_id = running.tenant_id
    WHERE running.charge > 0
    ORDER BY running.ord
), job AS (
    UPDATE jobs j
    SET state = i.state, engine = i.engine, images_succeeded = i.images, charged = i.charge,
        vendor_credits = i.vendor_credits, gpu_seconds = i.gpu_seconds, error = i.error,
        progress = CASE WHEN i.state = 'succeeded' THEN 1 ELSE j.progress END,
        finished_at = now(), updated_at = now(), lease_owner = NULL, lease_expires_at = NULL
    FROM reservation r JOIN input i ON i.ord = r.ord JOIN wallet ON wallet.tenant_id = r.tenant_id
    WHERE j.id = r.job_id AND j.state IN ('queued', 'running')
    RETURNING i.ord, {_UPDATED_JOB}
), files AS (
    INSERT INTO files (id, tenant_id, job_id, kind, blob_key, content_type, size, etag, filename, expires_at)
    SELECT f.id, job.tenant_id, job.id, 'image', f.blob_key, f.content_type, f.size, f.etag, f.filename,
           now() + make_interval(secs => $15)
    FROM job JOIN unnest($16::int[], $17::text[], $18::text[], $19::text[], $20::bigint[], $21::text[], $22::text[])
                  AS f(ord, id, blob_key, content_type, size, etag, filename) ON f.ord = job.ord
), results AS (
    UPDATE job_results r SET status = x.status, file_id = x.file_id, seed = x.seed, error = x.error
    FROM job JOIN unnest($23::int[], $24::int[], $25::text[], $26::text[], $27::bigint[], $28::text[])
                  AS x(ord, index, status, file_id, seed, error) ON x.ord = job.ord
    WHERE r.job_id = job.id AND r.index = x.index
), usage AS (
    -- One row per usage key: an INSERT may not update the same row twice.
    INSERT INTO usage_daily AS u (tenant_id, day, operation, engine, api_key_id, jobs, images, failed_images,
                                  charged, vendor_credits, gpu_seconds)
    SELECT job.tenant_id, (now() AT TIME ZONE 'UTC')::date, job.operation, coalesce(i.engine, 'none'),
           coalesce(job.api_key_id, '00000000-0000-0000-0000-000000000000'::uuid), count(*), sum(i.images),
           sum(i.failed_images), sum(i.charge), sum(i.vendor_credits), sum(i.gpu_seconds)
    FROM job JOIN input i ON i.ord = job.ord
    GROUP BY 1, 2, 3, 4, 5
    ON CONFLICT (tenant_id, day, operation, engine, api_key_id) DO UPDATE
    SET jobs = u.jobs + EXCLUDED.jobs, images = u.images + EXCLUDED.images,
        failed_images = u.failed_images + EXCLUDED.failed_images, charged = u.charged + EXCLUDED.charged,
        vendor_credits = u.vendor_credits + EXCLUDED.vendor_credits, gpu_seconds = u.gpu_seconds + EXCLUDED.gpu_seconds
), attempts AS (
    INSERT INTO job_attempts (job_id, engine, outcome, latency_ms, error_class, error, images, received)
    SELECT job.id, a.engine, a.outcome, a.latency_ms, a.error_class, a.error, a.images, a.received
    FROM job JOIN unnest($29::int[], $30::text[], $31::text[], $32::int[], $33::text[], $34::text[], $35::int[],
                         $36::jsonb[])
                  WITH ORDINALITY AS a(ord, engine, outcome, latency_ms, error_class, error, images, received, n)
                  ON a.ord = job.ord
    ORDER BY job.ord, a.n
), tenant AS (
    SELECT t.id, nullif(t.webhook_url, '') AS url FROM tenants t WHERE t.id IN (SELECT tenant_id FROM reservation)
), job_event AS (
    INSERT INTO webhook_outbox (tenant_id, message_id, url, event_type, payload, request_id)
    SELECT job.tenant_id, i.message_id, coalesce(nullif(job.webhook_url, ''), tenant.url), i.event_type, i.payload,
           job.request_id
    FROM job JOIN input i ON i.ord = job.ord JOIN tenant ON tenant.id = job.tenant_id
    WHERE coalesce(nullif(job.webhook_url, ''), tenant.url) IS NOT NULL
    ORDER BY job.ord
    ON CONFLICT (message_id) DO NOTHING
), low_balance AS (
    -- Sent by the settlement that found the wallet below its threshold, with the wallet as it left it.
    INSERT INTO webhook_outbox (tenant_id, message_id, url, event_type, payload)
    SELECT wallet.tenant_id, first.low_balance_message_id, tenant.url, 'balance.low',
           jsonb_build_object('type', 'balance.low', 'data', jsonb_build_object(
               'available', trim_scale(first.available_after::numeric / 1000),
               'threshold', trim_scale(wallet.low_balance_threshold::numeric / 1000)))
    FROM wallet JOIN tenant ON tenant.id = wallet.tenant_id
    CROSS JOIN LATERAL (
        SELECT i.low_balance_message_id, running.available_after
        FROM running JOIN input i ON i.ord = running.ord
        WHERE running.tenant_id = wallet.tenant_id AND running.available_after < wallet.low_balance_threshold
        ORDER BY running.ord LIMIT 1
    ) AS first
    WHERE wallet.crossed AND tenant.url IS NOT NULL
    ON CONFLICT (message_id) DO NOTHING
)
SELECT (reservation.job_id IS NOT NULL)::int AS closed, coalesce(job0.cancel_requested, false) AS cancel_was_requested,
       {_RETURNED_JOB}
FROM input
LEFT JOIN reservation ON reservation.ord = input.ord
LEFT JOIN job0 ON job0.id = input.job_id
LEFT JOIN job ON job.ord = input.ord
ORDER BY input.ord
"""  # noqa: S608 - only constants are interpolated


class ResultRow(msgspec.Struct, frozen=True):
    index: int
    status: str
    file_id: str | None
    seed: int | None
    error: str | None


class FileRow(msgspec.Struct, frozen=True):
    id: str
    blob_key: str
    content_type: str
    size: int
    etag: str
    filename: str


class SettleArgs(msgspec.Struct, frozen=True, kw_only=True):
    """One job's settlement: charge `charge` and release the rest of its reservation, unless someone
    closed it first (or, with `unless_cancel_requested`, its cancellation was requested); then write
    its end. `event` is the job's webhook (message id, event type, payload); `attempts` are the run's
    engine attempts not written yet."""

    job_id: UUID
    charge: int
    state: str
    engine: str | None
    images_succeeded: int
    failed_images: int
    vendor_credits: float
    gpu_seconds: float
    error: dict[str, Any] | None
    file_ttl_s: int
    unless_cancel_requested: bool
    files: list[FileRow]
    results: list[ResultRow]
    event: tuple[str, str, dict[str, Any]]
    low_balance_message_id: str
    attempts: list[EngineAttempt]


# The order of each child table's arrays in both statements' parameters.
_FILE_FIELDS = ("id", "blob_key", "content_type", "size", "etag", "filename")
_RESULT_FIELDS = ("index", "status", "file_id", "seed", "error")
_ATTEMPT_FIELDS = ("engine", "outcome", "latency_ms", "error_class", "error", "images", "received")


async def settle_job(conn: Conn, args: SettleArgs) -> asyncpg.Record:
    """Settle one job (`SETTLE`). The row has `closed` (0 when someone else settled the job),
    `cancel_was_requested`, and the finished job's columns (NULL when the job was not finished here)."""
    message_id, event_type, payload = args.event
    with child_span("db.settle", db_attributes("SETTLE")):
        row: asyncpg.Record | None = await conn.fetchrow(
            SETTLE,
            args.job_id,
            args.charge,
            args.state,
            args.engine,
            args.images_succeeded,
            args.vendor_credits,
            args.gpu_seconds,
            args.error,
            args.file_ttl_s,
            args.unless_cancel_requested,
            *field_arrays(args.files, _FILE_FIELDS),
            *field_arrays(args.results, _RESULT_FIELDS),
            args.failed_images,
            message_id,
            event_type,
            payload,
            args.low_balance_message_id,
            *field_arrays(args.attempts, _ATTEMPT_FIELDS),
        )
    assert row is not None, "the final SELECT always returns one row"
    return row


async def settle_jobs(conn: Conn, batch: list[SettleArgs]) -> list[asyncpg.Record]:
    """Settle several jobs in one statement (`SETTLE_MANY`); one row per job, in order, as `settle_job`'s.

    The jobs must be distinct, and all must share one `file_ttl_s`."""
    if len({a.job_id for a in batch}) != len(batch) or len({a.file_ttl_s for a in batch}) != 1:
        raise ValueError("a settlement batch needs distinct jobs and one file TTL")
    files = [(n, f) for n, a in enumerate(batch, 1) for f in a.files]
    results = [(n, r) for n, a in enumerate(batch, 1) for r in a.results]
    attempts = [(n, t) for n, a in enumerate(batch, 1) for t in a.attempts]
    with child_span("db.settle", db_attributes("SETTLE_MANY", len(batch))):
        rows = await conn.fetch(
            SETTLE_MANY,
            [a.job_id for a in batch],
            [a.charge for a in batch],
            [a.state for a in batch],
            [a.engine for a in batch],
            [a.images_succeeded for a in batch],
            [a.failed_images for a in batch],
            [a.vendor_credits for a in batch],
            [a.gpu_seconds for a in batch],
            [a.error for a in batch],
            [a.unless_cancel_requested for a in batch],
            [a.event[0] for a in batch],
            [a.event[1] for a in batch],
            [a.event[2] for a in batch],
            [a.low_balance_message_id for a in batch],
            batch[0].file_ttl_s,
            [n for n, _ in files],
            *field_arrays([f for _, f in files], _FILE_FIELDS),
            [n for n, _ in results],
            *field_arrays([r for _, r in results], _RESULT_FIELDS),
            [n for n, _ in attempts],
            *field_arrays([t for _, t in attempts], _ATTEMPT_FIELDS),
        )
    return list(rows)
