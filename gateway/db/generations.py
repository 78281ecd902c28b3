"""SQL of a generation's hot path: admission as ONE statement, and a job with its results and attempts
in one query. Settlement, also one statement, is in gateway/db/settlements.py.

Each statement is a chain of data-modifying CTEs, so it runs as its own transaction in a single
round trip, and the wallet row lock it takes is held only while PostgreSQL executes it, not across
network round trips: that lock is what serializes one tenant's requests. They do what the
multi-statement versions in gateway/db/billing.py and gateway/db/jobs.py do, row for row.

Why the statements are safe under READ COMMITTED: the wallet is read `FOR UPDATE` in the first CTE,
which waits for a concurrent writer and then returns the newest committed row, so the checks and the
arithmetic use current values; the UPDATE of that row later in the statement finds it locked by us.
Every later CTE reads the rows the previous one returned, so nothing runs unless the step it
depends on happened (no wallet change, no job).

Why a sync request's admission may commit without waiting for its WAL flush (`synchronous_commit`
off for that one transaction): its job is leased to this process and run at once, and nobody outside
learns of it before a later commit of ours that does wait: the settlement (or release) before the
answer, or the lease renewal before a sync request that ran out of time answers 202. WAL is flushed
in order, so that later flush makes the admission durable too. If PostgreSQL crashes in between,
the admission may be lost whole (job, reservation and hold together, nothing charged) and the
request fails; it is never half kept. A queued job's admission is answered with 202 at once, so it
keeps the session's setting. This saves one WAL flush wait per sync request, time during which the
wallet gate is held.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from gateway.db import Conn, field_arrays
from gateway.db.jobs import JOB_COLUMNS, NOTIFY_CHANNEL


def job_columns(alias: str) -> str:
    """JOB_COLUMNS qualified by a table alias (the `job` CTE, or `jobs` as `j`)."""
    return ", ".join(f"{alias}.{c.strip()}" for c in JOB_COLUMNS.split(","))


_RETURNED_JOB = job_columns("job")

ADMIT = f"""
WITH wallet AS (
    SELECT w.tenant_id, w.balance, w.held, w.active_jobs, t.max_concurrent_jobs
    FROM wallets w JOIN tenants t ON t.id = w.tenant_id
    WHERE w.tenant_id = $2
    FOR UPDATE OF w
), price AS (
    SELECT max(id) AS version FROM price_versions
), admitted AS (
    SELECT wallet.tenant_id FROM wallet, price
    WHERE price.version = $8
      AND wallet.active_jobs < wallet.max_concurrent_jobs
      AND wallet.balance - wallet.held >= $15
), held AS (
    UPDATE wallets w SET held = w.held + $15, active_jobs = w.active_jobs + 1, updated_at = now()
    FROM admitted WHERE w.tenant_id = admitted.tenant_id
    RETURNING w.tenant_id
), job AS (
    INSERT INTO jobs (id, tenant_id, api_key_id, operation, state, params, n, unit_price, price_version_id,
                      allowed_engines, download_password_hash, webhook_url, deadline_at,
                      lease_owner, lease_expires_at, started_at, runs)
    SELECT $1, held.tenant_id, $3, $4, CASE WHEN $13::text IS NULL THEN 'queued' ELSE 'running' END, $5, $6, $7, $8,
           $9, $10, $11, now() + make_interval(secs => $12),
           $13, CASE WHEN $13::text IS NULL THEN NULL ELSE now() + make_interval(secs => $14) END,
           CASE WHEN $13::text IS NULL THEN NULL ELSE now() END,
           CASE WHEN $13::text IS NULL THEN 0 ELSE 1 END
    FROM held
    RETURNING {JOB_COLUMNS}
), results AS (
    INSERT INTO job_results (job_id, index, status)
    SELECT job.id, i, 'pending' FROM job, generate_series(0, $6 - 1) AS i
), inputs AS (
    INSERT INTO job_inputs (job_id, role, blob_key, content_type, width, height)
    SELECT job.id, x.role, x.blob_key, x.content_type, x.width, x.height
    FROM job, unnest($16::text[], $17::text[], $18::text[], $19::int[], $20::int[])
         AS x(role, blob_key, content_type, width, height)
), reservation AS (
    INSERT INTO reservations (job_id, tenant_id, api_key_id, amount)
    SELECT job.id, job.tenant_id, $3, $15 FROM job
), notified AS (
    SELECT pg_notify('{NOTIFY_CHANNEL}', job.id::text) FROM job WHERE $13::text IS NULL
), durability AS (
    -- A job run at once for a waiting client (leased, $13) commits without waiting for its WAL flush:
    -- nobody outside learns of it until a later commit that does wait (see the module docstring).
    SELECT set_config('synchronous_commit', 'off', true) AS synchronous_commit FROM job WHERE $13::text IS NOT NULL
)
SELECT wallet.balance AS wallet_balance, wallet.held AS wallet_held, wallet.active_jobs AS wallet_active_jobs,
       wallet.max_concurrent_jobs AS wallet_max_concurrent_jobs, price.version AS current_price_version,
       (SELECT count(*) FROM notified) AS notified,
       coalesce((SELECT synchronous_commit FROM durability), current_setting('synchronous_commit'))
           AS synchronous_commit, {_RETURNED_JOB}
FROM wallet CROSS JOIN price LEFT JOIN job ON true
"""  # noqa: S608 - only constants are interpolated


class Input(msgspec.Struct, frozen=True):
    role: str
    blob_key: str
    content_type: str
    width: int
    height: int


_INPUT_FIELDS = ("role", "blob_key", "content_type", "width", "height")  # ADMIT's $16-$20


async def admit_job(
    conn: Conn,
    *,
    job_id: UUID,
    tenant_id: UUID,
    key_id: UUID | None,
    operation: str,
    params: dict[str, Any],
    n: int,
    unit_price: int,
    price_version_id: int,
    amount: int,
    allowed_engines: list[str] | None,
    password_hash: str | None,
    webhook_url: str | None,
    deadline_s: float,
    lease_owner: str | None,
    lease_s: float,
    inputs: list[Input],
) -> asyncpg.Record:
    """Reserve `amount` and insert the job with its pending results, inputs and reservation, if the
    price version is still `price_version_id`, the tenant is under its job limit and the wallet covers
    `amount`. The row carries the wallet as locked (`wallet_*`), the current price version, and the
    job's columns, which are NULL when it was not admitted."""
    row: asyncpg.Record | None = await conn.fetchrow(
        ADMIT,
        job_id,
        tenant_id,
        key_id,
        operation,
        params,
        n,
        unit_price,
        price_version_id,
        allowed_engines,
        password_hash,
        webhook_url,
        deadline_s,
        lease_owner,
        lease_s,
        amount,
        *field_arrays(inputs, _INPUT_FIELDS),
    )
    assert row is not None, "every tenant has a wallet"
    return row


JOB_WITH_DETAILS = f"""
SELECT {JOB_COLUMNS},
       (SELECT coalesce(jsonb_agg(jsonb_build_object('index', r.index, 'status', r.status, 'file_id', r.file_id,
                                                     'seed', r.seed, 'error', r.error) ORDER BY r.index), '[]')
        FROM job_results r WHERE r.job_id = jobs.id) AS results_json,
       (SELECT coalesce(jsonb_agg(jsonb_build_object('engine', a.engine, 'outcome', a.outcome,
                                                     'latency_ms', a.latency_ms, 'images', a.images,
                                                     'error_class', a.error_class, 'error', a.error)
                                  ORDER BY a.id), '[]')
        FROM job_attempts a WHERE a.job_id = jobs.id) AS attempts_json
FROM jobs WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2)
"""  # noqa: S608 - only constants are interpolated


async def job_with_details(
    conn: Conn, job_id: UUID, tenant_id: UUID | None
) -> tuple[asyncpg.Record, list[dict[str, Any]], list[dict[str, Any]]] | None:
    """A job (None when it is not `tenant_id`'s), its results by index and its attempts in order, in
    one round trip instead of three."""
    row: asyncpg.Record | None = await conn.fetchrow(JOB_WITH_DETAILS, job_id, tenant_id)
    if row is None:
        return None
    return row, row["results_json"], row["attempts_json"]
