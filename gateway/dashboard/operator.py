"""The operator's dashboard: tenants and their balances, credit changes, prices, engines, platform usage.

Only an operator session reaches these pages; a tenant session gets 404, as for any page that is not its own.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any
from uuid import UUID

from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery

from gateway.api.cursors import CreatedAtKey, decode_cursor, encode_cursor
from gateway.api.usage import platform_usage_rows, tenant_balance
from gateway.auth import service
from gateway.dashboard import pages
from gateway.dashboard.charts import daily_series, every_day, stacked_bars
from gateway.dashboard.sessions import DashboardSession, checked_form
from gateway.db import billing as bq
from gateway.db import keys as kq
from gateway.domain.money import MILLI, to_credits
from gateway.errors import GatewayError, NotFound, ValidationFailed
from gateway.state import Services

TENANTS_PER_PAGE = 50
LEDGER_ROWS = 20
# Above any real balance, far below bigint millicredits (the admin API's limit too).
MAX_CREDITS = Decimal(10) ** 12


def _operator(session: DashboardSession) -> None:
    if not session.is_operator:
        raise NotFound("No such page.")


def engine_margins(rows: list[Any]) -> list[dict[str, Any]]:
    """Per engine: what tenants were charged against what the engine cost: `cost` and `margin` in
    credits (priced with the engines' configured unit costs, as /v1/admin/usage does), and the raw
    ratios per vendor credit and per GPU hour, which need no configured price."""
    out = []
    for r in rows:
        charged = to_credits(r["charged"] or 0)
        vendor = float(r["vendor_credits"] or 0.0)
        gpu_s = float(r["gpu_seconds"] or 0.0)
        out.append(
            {
                "engine": r["engine"],
                "jobs": r["jobs"] or 0,
                "images": r["images"] or 0,
                "failed_images": r["failed_images"] or 0,
                "charged": charged,
                "cost": to_credits(r["cost"] or 0),
                "margin": to_credits((r["charged"] or 0) - (r["cost"] or 0)),
                "vendor_credits": vendor,
                "gpu_seconds": gpu_s,
                "per_vendor_credit": charged / vendor if vendor > 0 else None,
                "per_gpu_hour": charged / (gpu_s / 3600) if gpu_s > 0 else None,
            }
        )
    return out


@get("/admin")
async def platform(
    *,
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    session: NamedDependency[DashboardSession],
    cursor: FromQuery[str | None] = None,
    days: FromQuery[int | None] = None,
) -> Response[str]:
    """Tenants with balances, engine health, the price book, and platform usage and margin per engine."""
    _operator(session)
    chosen, start, end = pages.day_range(days)
    before = decode_cursor(cursor, CreatedAtKey).pair() if cursor else None
    async with services.pool.acquire() as conn:
        tenants = await kq.list_tenants(conn, before=before, limit=TENANTS_PER_PAGE + 1)
        version, rules = await bq.current_price_rules(conn)
        # The same report as /v1/admin/usage?group_by=engine, priced with the same unit costs.
        by_engine = await bq.usage_report(
            conn,
            start=start,
            end=end,
            group_by=["engine"],
            tenant_id=None,
            unit_costs=services.settings.engine_unit_costs,
        )
        daily = await platform_usage_rows(conn, start, end, ["day", "engine"])
    last = tenants[TENANTS_PER_PAGE - 1] if len(tenants) > TENANTS_PER_PAGE else None
    days_list = every_day(start, end)
    series = daily_series(
        daily, days_list, day_of=lambda r: r.day, label_of=lambda r: r.engine, value_of=lambda r: r.credits
    )
    return pages.page(
        request,
        "admin.html",
        title="Platform",
        session=session,
        tenants=tenants[:TENANTS_PER_PAGE],
        next_cursor=encode_cursor(CreatedAtKey(last["created_at"], last["id"])) if last else None,
        engines=services.router.health(),
        price_version=version,
        rules=rules,
        margins=engine_margins([r for r in by_engine if r["jobs"]]),
        platform_chart=stacked_bars(
            chart_id="platform-chart",
            title="Credits charged by day",
            days=days_list,
            series=series,
            fmt=pages.credits,
            unit="credits",
        ),
        days=chosen,
        ranges=pages.RANGES,
        start=start,
        end=end,
        milli=MILLI,
    )


async def _tenant_page(
    request: Request[Any, Any, Any],
    services: Services,
    session: DashboardSession,
    tenant_id: UUID,
    *,
    status: int = 200,
    error: str | None = None,
    notice: str | None = None,
    form: dict[str, str] | None = None,
) -> Response[str]:
    async with services.pool.acquire() as conn:
        tenant = await kq.get_tenant(conn, tenant_id)
        if tenant is None:
            raise NotFound("No such tenant.")
        balance = await tenant_balance(conn, tenant_id)
        ledger = await bq.ledger_page(conn, tenant_id, None, LEDGER_ROWS)
        keys = await kq.list_tenant_keys(conn, tenant_id)
    return pages.page(
        request,
        "admin_tenant.html",
        status=status,
        title=f"Tenant {tenant['name']}",
        session=session,
        tenant=tenant,
        balance=balance,
        ledger=ledger,
        keys=keys,
        error=error,
        notice=notice,
        form=form or {"amount": "", "kind": "topup", "reason": ""},
        to_credits=to_credits,
    )


@get("/admin/tenants/{tenant_id:uuid}")
async def tenant_page(
    *,
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    session: NamedDependency[DashboardSession],
    tenant_id: FromPath[UUID],
    entry: FromQuery[int | None] = None,
) -> Response[str]:
    """One tenant: wallet, recent ledger entries, keys, and the form to top up or adjust credits."""
    _operator(session)
    notice = f"Recorded as ledger entry {entry}." if entry else None
    return await _tenant_page(request, services, session, tenant_id, notice=notice)


def parse_credits(text: str) -> int:
    """'12.5' -> 12500 millicredits; at most 3 decimals and within the admin API's bounds."""
    try:
        amount = Decimal(text.strip())
    except InvalidOperation as exc:
        raise ValidationFailed.field("amount", "enter a number of credits, e.g. 25 or -2.5") from exc
    if not amount.is_finite() or abs(amount) > MAX_CREDITS:
        raise ValidationFailed.field("amount", "must be a number of credits up to 10^12")
    milli = amount * MILLI
    if milli != milli.to_integral_value():
        raise ValidationFailed.field("amount", "amounts have at most 3 decimals")
    return int(milli)


@post("/admin/tenants/{tenant_id:uuid}/credits")
async def change_credits(
    *,
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    session: NamedDependency[DashboardSession],
    tenant_id: FromPath[UUID],
) -> Response[Any]:
    """A top-up or adjustment with its reason, as a ledger entry naming this operator key."""
    form = await checked_form(request, session)
    _operator(session)
    fields = {name: str(form.get(name) or "") for name in ("amount", "kind", "reason")}
    try:
        if fields["kind"] not in ("topup", "adjustment"):
            raise ValidationFailed.field("kind", "choose top-up or adjustment")
        amount = parse_credits(fields["amount"])
        async with services.pool.acquire() as conn, conn.transaction():
            entry = await service.adjust_credits(
                conn,
                tenant_id=tenant_id,
                amount=amount,
                kind="topup" if fields["kind"] == "topup" else "adjustment",
                reason=fields["reason"],
                operator_key_id=session.principal.key_id,
            )
    except NotFound:
        raise
    except GatewayError as exc:
        return await _tenant_page(
            request, services, session, tenant_id, status=exc.http_status, error=exc.detail, form=fields
        )
    return pages.see_other(f"/dashboard/admin/tenants/{tenant_id}?entry={entry['id']}")


routes = [platform, tenant_page, change_credits]
