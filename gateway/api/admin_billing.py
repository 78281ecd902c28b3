"""Operator billing API: usage and margin across tenants, and each tenant's low-balance alert
threshold (operator keys only). The price book is gateway/api/admin_prices.py."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from litestar import Request, Response, get, put
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody

from gateway.api.admin_prices import credits_field
from gateway.db import billing as bq
from gateway.domain.money import from_credits, to_credits
from gateway.errors import NotFound, ValidationFailed
from gateway.state import Services

_ADMIN = {"operator": True}
# Far above any sane threshold, far below bigint millicredits.
_MAX_THRESHOLD = 1e12

AdminGroupBy = Literal["tenant", "day", "operation", "engine", "key"]


class AdminUsageRow(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One group of usage. `cost` is the cost of goods (what the engines reported spending, at the
    configured unit costs) and `margin` = `credits` - `cost`, all in credits."""

    tenant_id: UUID | None = None
    day: date | None = None
    operation: str | None = None
    engine: str | None = None
    key_id: UUID | None = None
    jobs: int
    images: int
    failed_images: int
    credits: float
    vendor_credits: float
    gpu_seconds: float
    cost: float
    margin: float


class EngineUnitCost(msgspec.Struct, kw_only=True):
    """What one unit of an engine's reported spend costs, in credits (from gateway.toml)."""

    per_vendor_credit: float
    per_gpu_second: float


class AdminUsage(msgspec.Struct, kw_only=True):
    start: date
    end: date
    group_by: list[str]
    data: list[AdminUsageRow]
    total_images: int
    total_credits: float
    total_cost: float
    total_margin: float
    unit_costs: dict[str, EngineUnitCost]


class LowBalanceThreshold(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A `balance.low` webhook event is sent once each time the available credits fall below it."""

    threshold: (
        Annotated[float, msgspec.Meta(ge=0, le=_MAX_THRESHOLD, description="Credits; null switches the alert off.")]
        | None
    )


class WalletView(msgspec.Struct, kw_only=True):
    tenant_id: UUID
    object: str = "wallet"
    balance: float
    held: float
    available: float
    active_jobs: int
    low_balance_threshold: float | None
    low_balance_alert_sent: bool


@get(
    "/v1/admin/usage",
    operation_id="getAdminUsage",
    summary="Usage and margin across tenants",
    tags=["admin-usage"],
    opt={**_ADMIN, "problems": {422: "A parameter is invalid, or `start` is after `end`."}},
)
async def admin_usage(
    *,
    services: NamedDependency[Services],
    request: Request[Any, Any, Any],
    start: FromQuery[date | None] = None,
    end: FromQuery[date | None] = None,
    group_by: FromQuery[list[AdminGroupBy] | None] = None,
    tenant_id: FromQuery[UUID | None] = None,
) -> Response[Any]:
    """Jobs, images, credits charged, the engines' reported spend and its cost, and the margin,
    grouped by tenant, day (UTC), operation, engine and/or key. `group_by=engine` is the margin
    per engine. Defaults: the last 30 days, grouped by tenant. `Accept: text/csv` for CSV."""
    end = end or datetime.now(UTC).date()  # the rollup's days are UTC days
    start = start or end - timedelta(days=30)
    if start > end:
        raise ValidationFailed.field("start", "must not be after end")
    groups = list(dict.fromkeys(group_by or ["tenant"]))
    unit_costs = services.settings.engine_unit_costs
    async with services.pool.acquire() as conn:
        records = await bq.usage_report(
            conn, start=start, end=end, group_by=groups, tenant_id=tenant_id, unit_costs=unit_costs
        )
    rows = [
        AdminUsageRow(
            tenant_id=r.get("tenant_id"),
            day=r.get("day"),
            operation=r.get("operation"),
            engine=r.get("engine"),
            key_id=r.get("api_key_id"),
            jobs=r["jobs"],
            images=r["images"],
            failed_images=r["failed_images"],
            credits=to_credits(r["charged"]),
            vendor_credits=r["vendor_credits"],
            gpu_seconds=r["gpu_seconds"],
            cost=to_credits(r["cost"]),
            margin=to_credits(r["charged"] - r["cost"]),
        )
        for r in (dict(x) for x in records)
        if r["jobs"]  # without groups an empty range still yields one row of NULL sums
    ]
    if "text/csv" in request.headers.get("accept", ""):
        return Response(
            admin_usage_csv(rows, groups),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="usage-all-{start}-{end}.csv"'},
        )
    charged = sum(from_credits(r.credits) for r in rows)
    cost = sum(from_credits(r.cost) for r in rows)
    return Response(
        AdminUsage(
            start=start,
            end=end,
            group_by=groups,
            data=rows,
            total_images=sum(r.images for r in rows),
            total_credits=to_credits(charged),
            total_cost=to_credits(cost),
            total_margin=to_credits(charged - cost),
            unit_costs={
                name: EngineUnitCost(per_vendor_credit=vc, per_gpu_second=gs) for name, (vc, gs) in unit_costs.items()
            },
        )
    )


def admin_usage_csv(rows: list[AdminUsageRow], groups: list[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        [*groups, "jobs", "images", "failed_images", "credits", "vendor_credits", "gpu_seconds", "cost", "margin"]
    )
    for r in rows:
        keys = {"tenant": r.tenant_id, "day": r.day, "operation": r.operation, "engine": r.engine, "key": r.key_id}
        writer.writerow(
            [
                *(keys[g] for g in groups),
                r.jobs,
                r.images,
                r.failed_images,
                f"{r.credits:.3f}",
                f"{r.vendor_credits:g}",
                f"{r.gpu_seconds:g}",
                f"{r.cost:.3f}",
                f"{r.margin:.3f}",
            ]
        )
    return out.getvalue()


def _wallet_view(row: Any) -> WalletView:
    threshold = row["low_balance_threshold"]
    return WalletView(
        tenant_id=row["tenant_id"],
        balance=to_credits(row["balance"]),
        held=to_credits(row["held"]),
        available=to_credits(row["balance"] - row["held"]),
        active_jobs=row["active_jobs"],
        low_balance_threshold=None if threshold is None else to_credits(threshold),
        low_balance_alert_sent=row["low_balance_notified"],
    )


@put(
    "/v1/admin/tenants/{tenant_id:uuid}/low-balance-threshold",
    operation_id="setLowBalanceThreshold",
    summary="Set a tenant's low-balance threshold",
    tags=["admin-tenants"],
    opt={**_ADMIN, "problems": {404: "No such tenant."}},
)
async def set_low_balance_threshold(
    services: NamedDependency[Services], tenant_id: FromPath[UUID], data: JSONBody[LowBalanceThreshold]
) -> WalletView:
    """When a settlement leaves the tenant's available credits below the threshold, one `balance.low`
    webhook event goes to the tenant's webhook URL; it re-arms once the wallet is back at or above it.
    The tenant sees the threshold in `GET /v1/balance`."""
    threshold = None if data.threshold is None else credits_field(data.threshold, "threshold")
    async with services.pool.acquire() as conn, conn.transaction():
        row = await bq.set_low_balance_threshold(conn, tenant_id, threshold)
    if row is None:
        raise NotFound("No such tenant.")
    return _wallet_view(row)


routes = [admin_usage, set_low_balance_threshold]
