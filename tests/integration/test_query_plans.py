"""The hot queries stay on indexes at a realistic volume: 200k jobs with their reservations and
charges, a quarter of daily usage rollups, 50 tenants of which one has 40% of the jobs.

Each query is the real one from gateway/db (and the usage view), run through a connection that
EXPLAINs instead of executing. Plans are checked twice: as a custom plan for the given values,
and as the generic plan PostgreSQL switches prepared statements to after five executions.
Run with `-s` to see the plans and their timings.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from gateway.api.usage import usage_rows
from gateway.db import billing as bq
from gateway.db import jobs as jq
from gateway.db import retention as rq

JOBS = 200_000
BIG_TABLES = {"jobs", "reservations", "ledger_entries", "usage_daily"}
BIG_TENANT = UUID(int=1)
SMALL_TENANT = UUID(int=7)
NEW_TENANT = UUID(int=51)  # no jobs, no entries yet
KEY_OF_BIG_TENANT = UUID(int=(1 << 64) + 1)

LOAD = f"""
INSERT INTO tenants (id, name, webhook_secret)
SELECT ('00000000-0000-0000-0000-' || lpad(to_hex(i), 12, '0'))::uuid, 'tenant-' || i, 'whsec_x'
FROM generate_series(1, 51) AS i;
INSERT INTO wallets (tenant_id) SELECT id FROM tenants;
INSERT INTO api_keys (id, tenant_id, name, scopes, monthly_cap)
SELECT ('00000000-0000-0001-0000-' || right(id::text, 12))::uuid, id, 'main', '{{generate}}', 100000000 FROM tenants;

-- 40% of the jobs belong to tenant 1; the rest spread over the others. Oldest first, over 90
-- days; the newest 150 are still queued or running (50 with an expired lease), 10% failed.
INSERT INTO jobs (id, tenant_id, api_key_id, operation, state, params, n, unit_price, price_version_id,
                  engine, images_succeeded, charged, lease_owner, lease_expires_at, deadline_at,
                  created_at, started_at, finished_at)
SELECT gen_random_uuid(), t.id, ('00000000-0000-0001-0000-' || right(t.id::text, 12))::uuid,
       (ARRAY['text-to-image', 'image-to-image', 'inpaint'])[1 + i % 3],
       s.state, '{{"prompt": "a lighthouse"}}'::jsonb, 1, 400, 1,
       CASE WHEN s.state IN ('succeeded', 'failed') THEN 'a2c' END,
       CASE WHEN s.state = 'succeeded' THEN 1 ELSE 0 END,
       CASE WHEN s.state = 'succeeded' THEN 400 ELSE 0 END,
       CASE WHEN s.state = 'running' THEN 'runner-x' END,
       CASE WHEN s.state = 'running' THEN now() + CASE WHEN i % 2 = 0 THEN interval '30 s' ELSE interval '-5 s' END END,
       c.at + interval '10 minutes', c.at, c.at, CASE WHEN s.state IN ('succeeded', 'failed') THEN c.at END
FROM generate_series(1, {JOBS}) AS i
CROSS JOIN LATERAL (SELECT ('00000000-0000-0000-0000-'
                            || lpad(to_hex(CASE WHEN i % 5 < 2 THEN 1 ELSE 2 + i % 49 END), 12, '0'))::uuid AS id) t
CROSS JOIN LATERAL (SELECT CASE WHEN i > {JOBS} - 100 THEN 'queued' WHEN i > {JOBS} - 150 THEN 'running'
                                WHEN i % 10 = 0 THEN 'failed' ELSE 'succeeded' END AS state) s
CROSS JOIN LATERAL (SELECT now() - interval '90 days' * (1 - i::float8 / {JOBS}) AS at) c;

INSERT INTO reservations (job_id, tenant_id, api_key_id, amount, state, charged, released, created_at, closed_at)
SELECT id, tenant_id, api_key_id, 400,
       CASE state WHEN 'succeeded' THEN 'settled' WHEN 'failed' THEN 'released' ELSE 'held' END,
       charged, CASE WHEN state = 'failed' THEN 400 ELSE 0 END, created_at, finished_at
FROM jobs;

INSERT INTO ledger_entries (tenant_id, kind, amount, balance_after, job_id, api_key_id, reason, created_at)
SELECT tenant_id, 'charge', -400, 0, id, api_key_id, 'images produced', finished_at
FROM jobs WHERE state = 'succeeded';

INSERT INTO usage_daily (tenant_id, day, operation, engine, api_key_id, jobs, images, charged, vendor_credits)
SELECT t.id, d::date, op, engine, ('00000000-0000-0001-0000-' || right(t.id::text, 12))::uuid, 40, 36, 14400, 36
FROM tenants t,
     generate_series(now() - interval '90 days', now(), interval '1 day') AS d,
     unnest(ARRAY['text-to-image', 'image-to-image', 'inpaint']) AS op,
     unnest(ARRAY['a2c', 'qolaba']) AS engine;
"""


def literal(value: Any) -> str:
    """A value as SQL text; the prepared statement's parameter types give it its type."""
    if value is None:
        return "NULL"
    if isinstance(value, bool | int | float):
        return repr(value)
    if isinstance(value, list):
        return literal("{" + ",".join(str(v) for v in value) + "}")
    return "'" + str(value).replace("'", "''") + "'"


class Explaining:
    """Stands in for a connection: EXPLAINs each statement (ANALYZE inside a rolled-back
    transaction, so the claim query claims nothing) and keeps the plan."""

    def __init__(self, conn: asyncpg.Connection[Any], *, generic: bool) -> None:
        self.conn = conn
        self.generic = generic
        self.plans: list[dict[str, Any]] = []

    async def _explain(self, sql: str, *args: Any) -> None:
        explain = "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)"
        tr = self.conn.transaction()
        await tr.start()
        try:
            if self.generic:
                # A server-side prepared statement planned without its values, as PostgreSQL does for
                # a statement (asyncpg prepares every query) from its sixth execution on, when
                # custom plans look no cheaper.
                await self.conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
                await self.conn.execute(f"PREPARE hot AS {sql}")
                values = ", ".join(literal(a) for a in args)  # EXPLAIN EXECUTE takes no bind parameters
                raw = await self.conn.fetchval(f"{explain} EXECUTE hot({values})")
            else:
                raw = await self.conn.fetchval(f"{explain} {sql}", *args)
        finally:
            await tr.rollback()
            if self.generic:
                await self.conn.execute("DEALLOCATE hot")  # prepared statements outlive transactions
        self.plans.append(json.loads(raw)[0])

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        await self._explain(sql, *args)
        return []

    async def fetchrow(self, sql: str, *args: Any) -> None:
        await self._explain(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> int:
        await self._explain(sql, *args)
        return 0


def nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found.extend(nodes(child))
    return found


def summary(plan: dict[str, Any]) -> str:
    scans = [
        f"{n['Node Type']} on {n['Relation Name']}" + (f" using {n['Index Name']}" if "Index Name" in n else "")
        for n in nodes(plan["Plan"])
        if "Relation Name" in n
    ]
    buffers = plan["Plan"].get("Shared Hit Blocks", 0) + plan["Plan"].get("Shared Read Blocks", 0)
    return f"{plan['Execution Time']:.2f} ms, {buffers} buffers: " + "; ".join(scans)


@pytest.fixture
async def loaded(database_url: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    conn = await asyncpg.connect(database_url)
    started = time.monotonic()
    await conn.execute(LOAD)
    await conn.execute("VACUUM ANALYZE")  # the steady state autovacuum keeps
    print(f"\nloaded {JOBS} jobs with reservations, charges and rollups in {time.monotonic() - started:.1f} s")
    try:
        yield conn
    finally:
        await conn.close()


Query = Callable[[Any], Awaitable[Any]]


def hot_queries() -> dict[str, Query]:
    today = datetime.now(UTC).date()
    month_ago = today - timedelta(days=30)
    recent = (datetime.now(UTC) - timedelta(days=45), UUID(int=0))
    costs = {"a2c": (0.05, 0.0), "qolaba": (0.1, 0.0)}
    return {
        "ledger, first page": lambda c: bq.ledger_page(c, BIG_TENANT, None, 51),
        "ledger, deep page": lambda c: bq.ledger_page(c, BIG_TENANT, 1000, 51),
        "ledger, small tenant": lambda c: bq.ledger_page(c, SMALL_TENANT, None, 51),
        "ledger, new tenant": lambda c: bq.ledger_page(c, NEW_TENANT, None, 51),
        "usage by day, one tenant": lambda c: usage_rows(c, BIG_TENANT, month_ago, today, ["day"]),
        "usage by engine and key, one tenant": lambda c: usage_rows(
            c, SMALL_TENANT, month_ago, today, ["engine", "key"]
        ),
        "operator usage by tenant": lambda c: bq.usage_report(
            c, start=month_ago, end=today, group_by=["tenant"], tenant_id=None, unit_costs=costs
        ),
        "operator usage of one tenant by engine": lambda c: bq.usage_report(
            c, start=month_ago, end=today, group_by=["engine"], tenant_id=BIG_TENANT, unit_costs=costs
        ),
        "jobs, first page": lambda c: jq.list_jobs(c, BIG_TENANT, before=None, state=None, operation=None, limit=51),
        "jobs, page after a cursor": lambda c: jq.list_jobs(
            c, BIG_TENANT, before=recent, state=None, operation=None, limit=51
        ),
        "jobs, running only": lambda c: jq.list_jobs(
            c, BIG_TENANT, before=None, state="running", operation=None, limit=51
        ),
        "jobs, failed only, small tenant": lambda c: jq.list_jobs(
            c, SMALL_TENANT, before=None, state="failed", operation=None, limit=51
        ),
        "jobs, canceled only (none)": lambda c: jq.list_jobs(
            c, SMALL_TENANT, before=None, state="canceled", operation=None, limit=51
        ),
        "jobs, new tenant": lambda c: jq.list_jobs(c, NEW_TENANT, before=None, state=None, operation=None, limit=51),
        "runner claim": lambda c: jq.claim_jobs(c, "runner-test", 30.0, 16),
        "key's spend this month (monthly cap)": lambda c: bq.key_month_spend(c, KEY_OF_BIG_TENANT),
        # The retention sweeper's batch of the oldest finished jobs (the load spans 90 days). Locking
        # each row touches its page, so the batch is kept small here to see the scan's own cost.
        "retention: jobs past jobs_days": lambda c: rq.claim_old_jobs(c, 89, 100),
    }


# The index each query's generic plan must use (custom plans may pick another index for a
# given value, e.g. the primary key for a cursor deep in the ledger).
GENERIC_INDEX = {
    "ledger": "ledger_tenant_page",
    "jobs, first page": "jobs_tenant_page",
    "jobs, page after a cursor": "jobs_tenant_page",
    "jobs, new tenant": "jobs_tenant_page",
    "jobs, running only": "jobs_tenant_state_page",
    "jobs, failed only": "jobs_tenant_state_page",
    "jobs, canceled only": "jobs_tenant_state_page",
    "runner claim": "jobs_queued",
    "key's spend": "reservations_key_month_spend",
    "retention: jobs": "jobs_finished_created",
}
# Pages touched: the bad plans these indexes and queries avoid touched 2,500 to 7,000 here.
MAX_BUFFERS = 1000


@pytest.mark.slow
async def test_hot_queries_use_indexes_at_200k_jobs(loaded: asyncpg.Connection[Any]) -> None:
    problems: list[str] = []
    for mode in ("custom", "generic"):
        for name, query in hot_queries().items():
            explaining = Explaining(loaded, generic=mode == "generic")
            await query(explaining)
            assert explaining.plans, name
            for plan in explaining.plans:
                print(f"[{mode}] {name}: {summary(plan)}")
                seq = [n["Relation Name"] for n in nodes(plan["Plan"]) if n["Node Type"] == "Seq Scan"]
                if big := BIG_TABLES.intersection(seq):
                    problems.append(f"[{mode}] {name}: Seq Scan on {', '.join(sorted(big))}\n{json.dumps(plan)}")
                top = plan["Plan"]
                if top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0) > MAX_BUFFERS:
                    problems.append(f"[{mode}] {name}: touched too many pages: {summary(plan)}")
                used = {n["Index Name"] for n in nodes(plan["Plan"]) if "Index Name" in n}
                wanted = [index for prefix, index in GENERIC_INDEX.items() if name.startswith(prefix)]
                if mode == "generic" and wanted and wanted[0] not in used:
                    problems.append(f"[{mode}] {name}: does not use {wanted[0]}: {summary(plan)}")
    assert not problems, "\n".join(problems)
