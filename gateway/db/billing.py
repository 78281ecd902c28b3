"""SQL for wallets, reservations, the ledger and prices.

Functions here never open their own transaction: the caller's unit of work owns it.
"""

from __future__ import annotations

from datetime import date
from uuid import UUID

import asyncpg
import msgspec

from gateway.db import Conn, require_tenant
from gateway.domain.money import PriceRule


class LockedWallet(msgspec.Struct, frozen=True, kw_only=True):
    """A wallet as admission checks it, read under its row lock; amounts in millicredits."""

    balance: int
    held: int
    active_jobs: int
    max_concurrent_jobs: int


async def current_price_rules(conn: Conn) -> tuple[int, list[PriceRule]]:
    """The newest price version and its rules."""
    rows = await conn.fetch(
        """SELECT version_id, operation, model, base, ref_pixels, ref_steps, cap FROM price_rules
           WHERE version_id = (SELECT max(id) FROM price_versions)"""
    )
    version = rows[0]["version_id"]
    return version, [_rule(r) for r in rows]


async def lock_price_book(conn: Conn) -> None:
    """Share-lock the price book until the transaction ends, so the version read next stays the
    newest: a publish (`insert_price_version`, EXCLUSIVE) waits for this transaction."""
    await conn.execute("LOCK TABLE price_versions IN SHARE MODE")


def _rule(r: asyncpg.Record) -> PriceRule:
    return PriceRule(
        operation=r["operation"],
        model=r["model"],
        base=r["base"],
        ref_pixels=r["ref_pixels"],
        ref_steps=r["ref_steps"],
        cap=r["cap"],
    )


async def price_version(conn: Conn, version_id: int | None) -> tuple[asyncpg.Record, list[PriceRule]] | None:
    """A price version (the current one when `version_id` is None) and its rules; None if there is none."""
    version = await conn.fetchrow(
        """SELECT id, note, created_by_key_id, created_at FROM price_versions
           WHERE id = coalesce($1, (SELECT max(id) FROM price_versions))""",
        version_id,
    )
    if version is None:
        return None
    rows = await conn.fetch(
        """SELECT operation, model, base, ref_pixels, ref_steps, cap FROM price_rules
           WHERE version_id = $1 ORDER BY operation, model""",
        version["id"],
    )
    return version, [_rule(r) for r in rows]


async def price_versions_page(conn: Conn, before_id: int | None, limit: int) -> list[asyncpg.Record]:
    """Price versions newest first, without their rules; `before_id` is the cursor."""
    return await conn.fetch(
        """SELECT v.id, v.note, v.created_by_key_id, v.created_at,
                  (SELECT count(*) FROM price_rules r WHERE r.version_id = v.id) AS rules
           FROM price_versions v WHERE ($1::integer IS NULL OR v.id < $1) ORDER BY v.id DESC LIMIT $2""",
        before_id,
        limit,
    )


async def insert_price_version(conn: Conn, rules: list[PriceRule], note: str, operator_key_id: UUID | None) -> int:
    """A new current price book. Jobs admitted before keep the version they were admitted with."""
    # The current version is the highest id: two operators publishing at once must commit in id
    # order, or the one that committed last could be shadowed. EXCLUSIVE still lets admissions read.
    await conn.execute("LOCK TABLE price_versions IN EXCLUSIVE MODE")
    version: int = await conn.fetchval(
        "INSERT INTO price_versions (note, created_by_key_id) VALUES ($1, $2) RETURNING id", note, operator_key_id
    )
    await conn.executemany(
        """INSERT INTO price_rules (version_id, operation, model, base, ref_pixels, ref_steps, cap)
           VALUES ($1, $2, $3, $4, $5, $6, $7)""",
        [(version, r.operation, r.model, r.base, r.ref_pixels, r.ref_steps, r.cap) for r in rules],
    )
    return version


async def lock_wallet(conn: Conn, tenant_id: UUID) -> LockedWallet:
    """The wallet row, locked until the transaction ends (serializes admissions per tenant)."""
    row = await conn.fetchrow(
        """SELECT w.balance, w.held, w.active_jobs, t.max_concurrent_jobs
           FROM wallets w JOIN tenants t ON t.id = w.tenant_id
           WHERE w.tenant_id = $1 FOR UPDATE OF w""",
        tenant_id,
    )
    assert row is not None, "every tenant has a wallet"
    return LockedWallet(**dict(row))


async def key_month_spend(conn: Conn, key_id: UUID) -> int:
    """Millicredits a key has charged or holds this calendar month (UTC)."""
    value: int = await conn.fetchval(
        """SELECT coalesce(sum(CASE WHEN state = 'held' THEN amount ELSE charged END), 0)::bigint
           FROM reservations
           WHERE api_key_id = $1 AND created_at >= date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'""",
        key_id,
    )
    return value


async def credit(
    conn: Conn, *, tenant_id: UUID, kind: str, amount: int, reason: str, operator_key_id: UUID | None
) -> asyncpg.Record:
    """A top-up or adjustment as a ledger entry. The wallet check constraint refuses going below held."""
    # The low-balance alert re-arms only once the wallet is back at or above its threshold, so a
    # top-up that still leaves it low does not make the next job send a second alert.
    wallet = await conn.fetchrow(
        """UPDATE wallets SET balance = balance + $2, updated_at = now(),
                              low_balance_notified = low_balance_notified
                                  AND balance + $2 - held < coalesce(low_balance_threshold, 0)
           WHERE tenant_id = $1 RETURNING balance, held""",
        tenant_id,
        amount,
    )
    if wallet is None:
        raise LookupError("no such tenant")
    await conn.execute(
        """INSERT INTO ledger_entries (tenant_id, kind, amount, balance_after, operator_key_id, reason)
           VALUES ($1, $2, $3, $4, $5, $6)""",
        tenant_id,
        kind,
        amount,
        wallet["balance"],
        operator_key_id,
        reason,
    )
    return wallet


async def wallet(conn: Conn, tenant_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT balance, held, active_jobs, low_balance_threshold FROM wallets WHERE tenant_id = $1", tenant_id
    )


async def ledger_page(conn: Conn, tenant_id: UUID, before_id: int | None, limit: int) -> list[asyncpg.Record]:
    """Newest first; `before_id` is the cursor (uses ledger_tenant_page).

    Written so that the generic plan of the prepared statement stays on ledger_tenant_page too.
    The cursor is an index bound (no `$2 IS NULL OR ...`). The tenant is matched as a range of
    one so that ordering by tenant_id is not dropped as redundant: the primary key then has no
    ordered path, and cannot turn a small tenant's page into a walk over every entry."""
    return await conn.fetch(
        """SELECT id, kind, amount, balance_after, job_id, api_key_id, reason, created_at
           FROM ledger_entries
           WHERE tenant_id BETWEEN $1 AND $1 AND id < coalesce($2::bigint, 9223372036854775807)
           ORDER BY tenant_id, id DESC LIMIT $3""",
        require_tenant(tenant_id),
        before_id,
        limit,
    )


async def mark_low_balance_notified(conn: Conn, tenant_id: UUID) -> None:
    await conn.execute("UPDATE wallets SET low_balance_notified = true WHERE tenant_id = $1", tenant_id)


async def set_low_balance_threshold(conn: Conn, tenant_id: UUID, threshold: int | None) -> asyncpg.Record | None:
    """Set (or clear, with None) the tenant's alert threshold; None when there is no such tenant.

    The alert re-arms: a wallet already below the new threshold is told so by its next settlement."""
    return await conn.fetchrow(
        """UPDATE wallets SET low_balance_threshold = $2, low_balance_notified = false, updated_at = now()
           WHERE tenant_id = $1
           RETURNING tenant_id, balance, held, active_jobs, low_balance_threshold, low_balance_notified""",
        tenant_id,
        threshold,
    )


# The rollup's grouping columns by API name (a whitelist: they are put into SQL).
USAGE_GROUPS = {
    "tenant": "u.tenant_id",
    "day": "u.day",
    "operation": "u.operation",
    "engine": "u.engine",
    "key": "u.api_key_id",
}


async def usage_report(
    conn: Conn,
    *,
    start: date,
    end: date,
    group_by: list[str],
    tenant_id: UUID | None,
    unit_costs: dict[str, tuple[float, float]],
) -> list[asyncpg.Record]:
    """Usage from the daily rollup (one tenant's, or across tenants with `tenant_id=None`), with
    the cost of goods: the operators' query (/v1/admin/usage, the operator dashboard). Tenant views
    go through `usage_totals`, which requires a tenant id.

    `unit_costs` maps an engine to (credits per vendor credit, credits per GPU second); engines
    not in it cost nothing. `cost` and `margin` are millicredits, rounded per group."""
    cols = [USAGE_GROUPS[g] for g in group_by]
    select = "".join(f"{c}, " for c in cols)
    tail = f"GROUP BY {', '.join(cols)} ORDER BY {', '.join(cols)}" if cols else ""
    # The tenant filter is spliced in, not `$3 IS NULL OR ...`, so a generic plan still uses the key.
    where = "u.day BETWEEN $1 AND $2" + (" AND u.tenant_id = $6" if tenant_id is not None else "")
    args: list[object] = [start, end, list(unit_costs), [c[0] for c in unit_costs.values()]]
    args.append([c[1] for c in unit_costs.values()])
    if tenant_id is not None:
        args.append(tenant_id)
    return await conn.fetch(
        f"""SELECT {select}sum(u.jobs)::bigint AS jobs, sum(u.images)::bigint AS images,
                   sum(u.failed_images)::bigint AS failed_images, sum(u.charged)::bigint AS charged,
                   sum(u.vendor_credits) AS vendor_credits, sum(u.gpu_seconds) AS gpu_seconds,
                   round(sum(u.vendor_credits * coalesce(c.per_vendor_credit, 0)
                             + u.gpu_seconds * coalesce(c.per_gpu_second, 0)) * 1000)::bigint AS cost
            FROM usage_daily u
            LEFT JOIN unnest($3::text[], $4::float8[], $5::float8[]) AS c (engine, per_vendor_credit, per_gpu_second)
                   ON c.engine = u.engine
            WHERE {where}
            {tail}""",  # noqa: S608 - columns come from USAGE_GROUPS
        *args,
    )


async def usage_totals(
    conn: Conn, tenant_id: UUID, start: date, end: date, group_by: list[str]
) -> list[asyncpg.Record]:
    """One tenant's `usage_report` without unit costs (its `cost` is then 0): what its own views show."""
    return await usage_report(
        conn, start=start, end=end, group_by=group_by, tenant_id=require_tenant(tenant_id), unit_costs={}
    )


async def platform_usage_totals(conn: Conn, start: date, end: date, group_by: list[str]) -> list[asyncpg.Record]:
    """Every tenant's usage together, without unit costs: for operators only."""
    return await usage_report(conn, start=start, end=end, group_by=group_by, tenant_id=None, unit_costs={})
