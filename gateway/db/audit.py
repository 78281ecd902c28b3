"""Every ledger invariant as one SQL query that returns the rows breaking it."""

from __future__ import annotations

from typing import Any

import asyncpg

CHECKS: dict[str, str] = {
    "wallet balance equals the sum of its ledger entries": """
        SELECT w.tenant_id, w.balance, coalesce(sum(l.amount), 0) AS ledger_sum
        FROM wallets w LEFT JOIN ledger_entries l ON l.tenant_id = w.tenant_id
        GROUP BY w.tenant_id, w.balance HAVING w.balance <> coalesce(sum(l.amount), 0)""",
    "held equals the sum of open reservations": """
        SELECT w.tenant_id, w.held, coalesce(sum(r.amount), 0) AS open_reservations
        FROM wallets w LEFT JOIN reservations r ON r.tenant_id = w.tenant_id AND r.state = 'held'
        GROUP BY w.tenant_id, w.held HAVING w.held <> coalesce(sum(r.amount), 0)""",
    "available balance is not negative": """
        SELECT tenant_id, balance, held FROM wallets WHERE balance - held < 0 OR held < 0""",
    "no job is both charged and released in full": """
        SELECT r.job_id FROM reservations r JOIN ledger_entries l ON l.job_id = r.job_id AND l.kind = 'charge'
        WHERE r.state = 'released'""",
    "each charge matches its reservation and is within it": """
        SELECT r.job_id, r.amount, r.charged, l.amount AS ledger_amount
        FROM reservations r LEFT JOIN ledger_entries l ON l.job_id = r.job_id AND l.kind = 'charge'
        WHERE r.charged > r.amount
           OR (r.state = 'settled' AND (l.amount IS NULL OR -l.amount <> r.charged))
           OR (r.state <> 'settled' AND l.id IS NOT NULL)""",
    "closed reservations account for their whole amount": """
        SELECT job_id FROM reservations WHERE state <> 'held' AND charged + released <> amount""",
    "a job's charge is its successful images times its unit price": """
        SELECT j.id, j.images_succeeded, j.unit_price, j.charged FROM jobs j
        WHERE j.state IN ('succeeded', 'failed', 'canceled')
          AND j.charged <> (CASE WHEN j.state = 'succeeded' THEN j.images_succeeded * j.unit_price ELSE 0 END)""",
    "finished jobs hold no reservation": """
        SELECT j.id, j.state FROM jobs j JOIN reservations r ON r.job_id = j.id
        WHERE j.state IN ('succeeded', 'failed', 'canceled') AND r.state = 'held'""",
    "unfinished jobs hold their reservation": """
        SELECT j.id, j.state FROM jobs j LEFT JOIN reservations r ON r.job_id = j.id
        WHERE j.state IN ('queued', 'running') AND (r.state IS DISTINCT FROM 'held')""",
    "active job counters match unfinished jobs": """
        SELECT w.tenant_id, w.active_jobs, count(j.id) AS unfinished
        FROM wallets w LEFT JOIN jobs j ON j.tenant_id = w.tenant_id AND j.state IN ('queued', 'running')
        GROUP BY w.tenant_id, w.active_jobs HAVING w.active_jobs <> count(j.id)""",
    "ledger balance_after runs are consistent": """
        SELECT id, tenant_id FROM (
            SELECT id, tenant_id, balance_after,
                   sum(amount) OVER (PARTITION BY tenant_id ORDER BY id) AS running
            FROM ledger_entries) s
        WHERE balance_after <> running""",
}


async def run_audit(
    conn: asyncpg.Connection[Any] | asyncpg.pool.PoolConnectionProxy[Any],
) -> dict[str, list[dict[str, Any]]]:
    """Every broken invariant with (up to 20 of) its offending rows; empty when all hold.

    Runs in one REPEATABLE READ snapshot so concurrent writes cannot produce false alarms."""
    problems: dict[str, list[dict[str, Any]]] = {}
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        for name, sql in CHECKS.items():
            rows = await conn.fetch(f"{sql} LIMIT 20")
            if rows:
                problems[name] = [dict(r) for r in rows]
    return problems
