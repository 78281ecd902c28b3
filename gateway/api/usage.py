"""GET /v1/balance, /v1/ledger, /v1/usage (JSON, or CSV with Accept: text/csv)."""

from __future__ import annotations

import csv
import io
from datetime import date, datetime, timedelta
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from litestar import Request, Response, get
from litestar.di import NamedDependency
from litestar.params import FromQuery, Parameter

from gateway.api.cursors import BigSerialKey, decode_cursor, encode_cursor
from gateway.auth.keys import Principal
from gateway.db import billing as bq
from gateway.domain.money import to_credits
from gateway.errors import ValidationFailed
from gateway.state import Services


class Balance(msgspec.Struct, kw_only=True, omit_defaults=True):
    balance: float
    held: float
    available: float
    active_jobs: int
    # Set by an operator; a `balance.low` webhook event is sent when `available` falls below it.
    low_balance_threshold: float | None = None


class LedgerEntry(msgspec.Struct, kw_only=True):
    id: int
    kind: str
    amount: float
    balance_after: float
    job_id: UUID | None
    reason: str
    created_at: datetime


class LedgerPage(msgspec.Struct, kw_only=True):
    data: list[LedgerEntry]
    next_cursor: str | None


class UsageRow(msgspec.Struct, kw_only=True, omit_defaults=True):
    day: date | None = None
    operation: str | None = None
    engine: str | None = None
    key_id: UUID | None = None
    jobs: int
    images: int
    failed_images: int
    credits: float


class Usage(msgspec.Struct, kw_only=True):
    start: date
    end: date
    group_by: list[str]
    data: list[UsageRow]
    total_images: int
    total_credits: float


GroupBy = Literal["day", "operation", "engine", "key"]


async def usage_rows(conn: Any, tenant_id: UUID, start: date, end: date, group_by: list[str]) -> list[UsageRow]:
    """One tenant's usage from the daily rollup."""
    return _usage_rows(await bq.usage_totals(conn, tenant_id, start, end, group_by))


async def platform_usage_rows(conn: Any, start: date, end: date, group_by: list[str]) -> list[UsageRow]:
    """Every tenant's usage together, from the daily rollup: for operators only."""
    return _usage_rows(await bq.platform_usage_totals(conn, start, end, group_by))


def _usage_rows(rows: list[Any]) -> list[UsageRow]:
    return [
        UsageRow(
            day=r.get("day"),
            operation=r.get("operation"),
            engine=r.get("engine"),
            key_id=r.get("api_key_id"),
            jobs=r["jobs"] or 0,
            images=r["images"] or 0,
            failed_images=r["failed_images"] or 0,
            credits=to_credits(r["charged"] or 0),
        )
        for r in (dict(x) for x in rows)
        if r["jobs"]
    ]


async def tenant_balance(conn: Any, tenant_id: UUID) -> Balance:
    """The tenant's wallet in credits, as /v1/balance and the dashboard show it."""
    w = await bq.wallet(conn, tenant_id)
    assert w is not None, "every tenant has a wallet"
    return Balance(
        balance=to_credits(w["balance"]),
        held=to_credits(w["held"]),
        available=to_credits(w["balance"] - w["held"]),
        active_jobs=w["active_jobs"],
        low_balance_threshold=None if w["low_balance_threshold"] is None else to_credits(w["low_balance_threshold"]),
    )


@get("/v1/balance", operation_id="getBalance", summary="Get the balance", tags=["billing"], opt={"scope": "usage:read"})
async def balance(services: NamedDependency[Services], principal: NamedDependency[Principal]) -> Balance:
    """Balance, credits held by unfinished jobs, and what is available."""
    async with services.pool.acquire() as conn:
        return await tenant_balance(conn, principal.tenant)


@get(
    "/v1/ledger",
    operation_id="listLedgerEntries",
    summary="List ledger entries",
    tags=["billing"],
    opt={"scope": "usage:read", "problems": {422: "A parameter is invalid, or `cursor` is not one this API returned."}},
)
async def ledger(
    *,
    services: NamedDependency[Services],
    principal: NamedDependency[Principal],
    cursor: FromQuery[str | None] = None,
    limit: Annotated[int, Parameter(ge=1, le=200)] = 50,
) -> LedgerPage:
    """Every balance change, newest first."""
    before = decode_cursor(cursor, BigSerialKey).id if cursor else None
    async with services.pool.acquire() as conn:
        rows = await bq.ledger_page(conn, principal.tenant, before, limit + 1)
    entries = [
        LedgerEntry(
            id=r["id"],
            kind=r["kind"],
            amount=to_credits(r["amount"]),
            balance_after=to_credits(r["balance_after"]),
            job_id=r["job_id"],
            reason=r["reason"],
            created_at=r["created_at"],
        )
        for r in rows[:limit]
    ]
    return LedgerPage(
        data=entries, next_cursor=encode_cursor(BigSerialKey(entries[-1].id)) if len(rows) > limit else None
    )


@get(
    "/v1/usage",
    operation_id="getUsage",
    summary="Get usage",
    tags=["billing"],
    opt={"scope": "usage:read", "problems": {422: "A parameter is invalid, or `start` is after `end`."}},
    media_type="application/json",
)
async def usage(
    *,
    services: NamedDependency[Services],
    principal: NamedDependency[Principal],
    request: Request[Any, Any, Any],
    start: FromQuery[date | None] = None,
    end: FromQuery[date | None] = None,
    group_by: FromQuery[list[GroupBy] | None] = None,
) -> Response[Any]:
    """Jobs, images and credits, grouped by day, operation, engine and/or key. `Accept: text/csv` for CSV."""
    end = end or datetime.now().date()
    start = start or end - timedelta(days=30)
    if start > end:
        raise ValidationFailed.field("start", "must not be after end")
    groups = list(dict.fromkeys(group_by or ["day"]))
    async with services.pool.acquire() as conn:
        rows = await usage_rows(conn, principal.tenant, start, end, groups)
    if "text/csv" in request.headers.get("accept", ""):
        return Response(
            usage_csv(rows, groups),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="usage-{start}-{end}.csv"'},
        )
    return Response(
        Usage(
            start=start,
            end=end,
            group_by=groups,
            data=rows,
            total_images=sum(r.images for r in rows),
            total_credits=to_credits(sum(round(r.credits * 1000) for r in rows)),
        )
    )


def usage_csv(rows: list[UsageRow], groups: list[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([*groups, "jobs", "images", "failed_images", "credits"])
    for r in rows:
        keys = {"day": r.day, "operation": r.operation, "engine": r.engine, "key": r.key_id}
        writer.writerow([*(keys[g] for g in groups), r.jobs, r.images, r.failed_images, f"{r.credits:.3f}"])
    return out.getvalue()


routes = [balance, ledger, usage]
