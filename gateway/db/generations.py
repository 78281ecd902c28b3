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

from gateway.db import Conn, field_arrays, require_tenant
from gateway.db.jobs import JOB_COLUMNS, NOTIFY_CHANNEL
from gateway.observability.tracing import child_span, db_attributes


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
                      lease_owner, lease_expires_at, started_at, runs, request_id, traceparent)
    SELECT $1, held.tenant_id, $3, $4, CASE WHEN $13::text IS NULL THEN 'queued' ELSE 'running' END, $5, $6, $7, $8,
           $9, $10, $11, now() + make_interval(secs => $12),
           $13, CASE WHEN $13::text IS NULL THEN NULL ELSE now() + make_interval(secs => $14) END,
           CASE WHEN $13::text IS NULL THEN NULL ELSE now() END,
           CASE WHEN $13::text IS NULL THEN 0 ELSE 1 END, $21::text, $22::text
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


ADMIT_MANY = f"""
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::jsonb[], $6::int[], $7::bigint[],
                         $8::int[], $9::text[], $10::text[], $11::text[], $12::float8[], $13::text[], $14::float8[],
                         $15::bigint[], $22::text[], $23::text[])
         WITH ORDINALITY AS x(job_id, tenant_id, api_key_id, operation, params, n, unit_price, price_version_id,
                              allowed_engines, password_hash, webhook_url, deadline_s, lease_owner, lease_s, amount,
                              request_id, traceparent, ord)
), wallet AS (
    SELECT w.tenant_id, w.balance, w.held, w.active_jobs, t.max_concurrent_jobs
    FROM wallets w JOIN tenants t ON t.id = w.tenant_id
    WHERE w.tenant_id IN (SELECT tenant_id FROM input)
    ORDER BY w.tenant_id
    FOR UPDATE OF w
), price AS (
    SELECT max(id) AS version FROM price_versions
), running AS (
    -- Each admission sees its wallet as the tenant's admissions before it in the batch left it.
    SELECT i.*, wallet.balance, wallet.max_concurrent_jobs, price.version AS current_price_version,
           (wallet.held + sum(i.amount) OVER w - i.amount)::bigint AS held_before,  -- sum(bigint) is numeric
           wallet.active_jobs + row_number() OVER w - 1 AS active_before
    FROM input i JOIN wallet ON wallet.tenant_id = i.tenant_id CROSS JOIN price
    WINDOW w AS (PARTITION BY i.tenant_id ORDER BY i.ord)
), checked AS (
    SELECT r.*, r.price_version_id = r.current_price_version AND r.active_before < r.max_concurrent_jobs
                AND r.balance - r.held_before >= r.amount AS fits
    FROM running r
), decided AS (
    -- Decided: every admission before it of its tenant fits, so its wallet is the one it would see
    -- alone. The ones after a tenant's first refusal are not: they are run again one by one.
    SELECT c.*, coalesce(bool_and(c.fits) OVER (PARTITION BY c.tenant_id ORDER BY c.ord
                                                ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), true) AS decided
    FROM checked c
), admitted AS (
    SELECT * FROM decided WHERE decided AND fits
), held AS (
    UPDATE wallets w SET held = w.held + a.amount, active_jobs = w.active_jobs + a.jobs, updated_at = now()
    FROM (SELECT tenant_id, sum(amount) AS amount, count(*) AS jobs FROM admitted GROUP BY tenant_id) AS a
    WHERE w.tenant_id = a.tenant_id
    RETURNING w.tenant_id
), job AS (
    INSERT INTO jobs (id, tenant_id, api_key_id, operation, state, params, n, unit_price, price_version_id,
                      allowed_engines, download_password_hash, webhook_url, deadline_at,
                      lease_owner, lease_expires_at, started_at, runs, request_id, traceparent)
    SELECT a.job_id, a.tenant_id, a.api_key_id, a.operation,
           CASE WHEN a.lease_owner IS NULL THEN 'queued' ELSE 'running' END, a.params, a.n, a.unit_price,
           a.price_version_id,
           CASE WHEN a.allowed_engines IS NOT NULL
                THEN ARRAY(SELECT jsonb_array_elements_text(a.allowed_engines::jsonb)) END,
           a.password_hash, a.webhook_url, now() + make_interval(secs => a.deadline_s),
           a.lease_owner, CASE WHEN a.lease_owner IS NOT NULL THEN now() + make_interval(secs => a.lease_s) END,
           CASE WHEN a.lease_owner IS NOT NULL THEN now() END,
           CASE WHEN a.lease_owner IS NULL THEN 0 ELSE 1 END, a.request_id, a.traceparent
    FROM admitted a JOIN held ON held.tenant_id = a.tenant_id
    ORDER BY a.ord
    RETURNING {JOB_COLUMNS}
), results AS (
    INSERT INTO job_results (job_id, index, status)
    SELECT job.id, i, 'pending' FROM job, generate_series(0, job.n - 1) AS i
), inputs AS (
    INSERT INTO job_inputs (job_id, role, blob_key, content_type, width, height)
    SELECT a.job_id, x.role, x.blob_key, x.content_type, x.width, x.height
    FROM job JOIN admitted a ON a.job_id = job.id
    JOIN unnest($16::int[], $17::text[], $18::text[], $19::text[], $20::int[], $21::int[])
         AS x(ord, role, blob_key, content_type, width, height) ON x.ord = a.ord
), reservation AS (
    INSERT INTO reservations (job_id, tenant_id, api_key_id, amount)
    SELECT a.job_id, a.tenant_id, a.api_key_id, a.amount FROM job JOIN admitted a ON a.job_id = job.id
), notified AS (
    SELECT pg_notify('{NOTIFY_CHANNEL}', job.id::text) FROM job WHERE job.lease_owner IS NULL
), durability AS (
    -- As ADMIT's, when every job it admitted is run at once here; a queued one keeps the flush wait.
    SELECT set_config('synchronous_commit', 'off', true) AS synchronous_commit
    WHERE EXISTS (SELECT FROM job) AND NOT EXISTS (SELECT FROM job WHERE job.lease_owner IS NULL)
)
SELECT d.decided, d.balance AS wallet_balance, d.held_before AS wallet_held,
       d.active_before AS wallet_active_jobs, d.max_concurrent_jobs AS wallet_max_concurrent_jobs,
       d.current_price_version, (SELECT count(*) FROM notified) AS notified,
       coalesce((SELECT synchronous_commit FROM durability), current_setting('synchronous_commit'))
           AS synchronous_commit, {_RETURNED_JOB}
FROM decided d LEFT JOIN job ON job.id = d.job_id
ORDER BY d.ord
"""  # noqa: S608 - only constants are interpolated


class Input(msgspec.Struct, frozen=True):
    role: str
    blob_key: str
    content_type: str
    width: int
    height: int


_INPUT_FIELDS = ("role", "blob_key", "content_type", "width", "height")  # ADMIT's $16-$20


class AdmitArgs(msgspec.Struct, frozen=True, kw_only=True):
    """One admission: reserve `amount` (= `n` x `unit_price`) and insert job `job_id` with its
    pending results, inputs and reservation, if the price version is still `price_version_id`, the
    tenant is under its job limit and its wallet covers `amount`."""

    job_id: UUID
    tenant_id: UUID
    key_id: UUID | None
    operation: str
    params: dict[str, Any]
    n: int
    unit_price: int
    price_version_id: int
    amount: int
    allowed_engines: list[str] | None
    password_hash: str | None
    webhook_url: str | None
    deadline_s: float
    lease_owner: str | None
    lease_s: float
    inputs: list[Input]
    request_id: str | None = None  # the X-Request-Id of the request that submits the job
    traceparent: str | None = None  # its span, when tracing is on: the job's run links to it


# The order of the per-admission arrays in ADMIT_MANY's parameters ($1-$15); ADMIT takes them as scalars.
_ADMIT_FIELDS = (
    "job_id",
    "tenant_id",
    "key_id",
    "operation",
    "params",
    "n",
    "unit_price",
    "price_version_id",
    "allowed_engines",
    "password_hash",
    "webhook_url",
    "deadline_s",
    "lease_owner",
    "lease_s",
    "amount",
)


async def admit_job(conn: Conn, args: AdmitArgs) -> asyncpg.Record:
    """Admit one job (`ADMIT`). The row carries the wallet as locked (`wallet_*`), the current price
    version, and the job's columns, which are NULL when it was not admitted."""
    with child_span("db.admit", db_attributes("ADMIT", 1)):
        row: asyncpg.Record | None = await conn.fetchrow(
            ADMIT,
            *(getattr(args, name) for name in _ADMIT_FIELDS),
            *field_arrays(args.inputs, _INPUT_FIELDS),
            args.request_id,
            args.traceparent,
        )
    assert row is not None, "every tenant has a wallet"
    return row


async def admit_jobs(conn: Conn, batch: list[AdmitArgs]) -> list[asyncpg.Record]:
    """Admit several jobs, of one tenant or several, in one statement (`ADMIT_MANY`): one row per
    job, in order, as `admit_job`'s, plus `decided`. A tenant's admissions are checked in order, each
    against the wallet the ones before it left, up to its first refusal, which is decided as it would
    be alone. Those after it are not decided (`decided` false, nothing written): run them again."""
    if len({a.job_id for a in batch}) != len(batch):
        raise ValueError("an admission batch needs distinct jobs")
    inputs = [(n, i) for n, a in enumerate(batch, 1) for i in a.inputs]
    arrays = field_arrays(batch, _ADMIT_FIELDS)
    # A list of lists would be taken for a two-dimensional array: each job's list goes as JSON text.
    engines = _ADMIT_FIELDS.index("allowed_engines")
    arrays[engines] = [None if e is None else msgspec.json.encode(e).decode() for e in arrays[engines]]
    with child_span("db.admit", db_attributes("ADMIT_MANY", len(batch))):
        rows = await conn.fetch(
            ADMIT_MANY,
            *arrays,
            [n for n, _ in inputs],
            *field_arrays([i for _, i in inputs], _INPUT_FIELDS),
            [a.request_id for a in batch],
            [a.traceparent for a in batch],
        )
    return list(rows)


JOB_WITH_DETAILS = f"""
SELECT {JOB_COLUMNS},
       (SELECT coalesce(jsonb_agg(jsonb_build_object('index', r.index, 'status', r.status, 'file_id', r.file_id,
                                                     'seed', r.seed, 'error', r.error) ORDER BY r.index), '[]')
        FROM job_results r WHERE r.job_id = jobs.id) AS results_json,
       (SELECT coalesce(jsonb_agg(jsonb_build_object('engine', a.engine, 'outcome', a.outcome,
                                                     'latency_ms', a.latency_ms, 'images', a.images,
                                                     'error_class', a.error_class, 'error', a.error,
                                                     'received', a.received)
                                  ORDER BY a.id), '[]')
        FROM job_attempts a WHERE a.job_id = jobs.id) AS attempts_json
FROM jobs WHERE id = $1 AND tenant_id = $2
"""  # noqa: S608 - only constants are interpolated


async def job_with_details(
    conn: Conn, job_id: UUID, tenant_id: UUID
) -> tuple[asyncpg.Record, list[dict[str, Any]], list[dict[str, Any]]] | None:
    """A job (None when it is not `tenant_id`'s), its results by index and its attempts in order, in
    one round trip instead of three."""
    row: asyncpg.Record | None = await conn.fetchrow(JOB_WITH_DETAILS, job_id, require_tenant(tenant_id))
    if row is None:
        return None
    return row, row["results_json"], row["attempts_json"]
