"""Operator billing API: the versioned price book, usage and margin across tenants, and each
tenant's low-balance alert threshold (operator keys only).

Prices are whole books: publishing one makes a new version that every later admission uses,
while jobs already admitted keep the unit price (and version) they were admitted with.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from litestar import Request, Response, get, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, PathParameter, QueryParameter

from gateway.api.cursors import INT32_MAX, decode_id_cursor
from gateway.auth.keys import Principal
from gateway.db import billing as bq
from gateway.domain.generation import OPERATIONS, Operation
from gateway.domain.money import PriceRule, from_credits, to_credits
from gateway.errors import NotFound, ValidationFailed
from gateway.state import Services

_ADMIN = {"operator": True}
# Far above any sane price or threshold, far below bigint millicredits.
_MAX_PRICE = 1e6
_MAX_THRESHOLD = 1e12


class PriceRuleSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Credits per image for one operation (and optionally one model):
    `clamp(base * max(1, pixels / ref_pixels) * max(1, steps / ref_steps), base, cap)`."""

    operation: Operation
    model: Annotated[
        str, msgspec.Meta(max_length=200, description="Empty: the operation's default for every other model.")
    ] = ""
    base: Annotated[
        float, msgspec.Meta(ge=0, le=_MAX_PRICE, description="Credits for an image up to ref_pixels and ref_steps.")
    ]
    ref_pixels: Annotated[int, msgspec.Meta(ge=1, le=64 * 1024 * 1024)] = 512 * 512
    ref_steps: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 30
    cap: Annotated[float, msgspec.Meta(ge=0, le=_MAX_PRICE, description="The most one image costs, in credits.")]


class PriceBookCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A whole new price book. It must give every operation a default rule (`model` empty)."""

    rules: Annotated[list[PriceRuleSpec], msgspec.Meta(min_length=1, max_length=1000)]
    note: Annotated[str, msgspec.Meta(max_length=1000, description="Why the prices changed.")] = ""


class PriceRuleView(msgspec.Struct, kw_only=True):
    operation: str
    model: str
    base: float
    ref_pixels: int
    ref_steps: int
    cap: float


class PriceBook(msgspec.Struct, kw_only=True):
    """One version of the price book; the current one is the newest."""

    id: int
    object: str = "price_book"
    note: str
    created_by_key_id: UUID | None
    created_at: datetime
    rules: list[PriceRuleView]


class PriceVersionSummary(msgspec.Struct, kw_only=True):
    id: int
    object: str = "price_version"
    note: str
    created_by_key_id: UUID | None
    created_at: datetime
    rules: int


class PriceVersionPage(msgspec.Struct, kw_only=True):
    """Price versions newest first; `next_cursor` is null on the last page."""

    data: list[PriceVersionSummary]
    next_cursor: str | None


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


def _credits(value: float, field: str) -> int:
    try:
        return from_credits(value)
    except ValueError as exc:
        raise ValidationFailed.field(field, str(exc)) from exc


def price_rules(data: PriceBookCreate) -> list[PriceRule]:
    """The book's rules in millicredits; 422 naming the rule that is wrong or the operation left without a price."""
    rules: list[PriceRule] = []
    seen: set[tuple[str, str]] = set()
    for i, spec in enumerate(data.rules):
        where = f"rules[{i}]"
        if (spec.operation, spec.model) in seen:
            raise ValidationFailed.field(where, f"a second rule for {spec.operation} and model {spec.model!r}")
        seen.add((spec.operation, spec.model))
        base, cap = _credits(spec.base, f"{where}.base"), _credits(spec.cap, f"{where}.cap")
        if cap < base:
            raise ValidationFailed.field(f"{where}.cap", "must not be below base")
        rules.append(
            PriceRule(
                operation=spec.operation,
                model=spec.model,
                base=base,
                ref_pixels=spec.ref_pixels,
                ref_steps=spec.ref_steps,
                cap=cap,
            )
        )
    for operation in OPERATIONS:
        if (operation, "") not in seen:
            # Admission would have no price for it: every request of that operation would fail.
            raise ValidationFailed.field("rules", f"no default rule (empty model) for {operation}")
    return rules


def _book(version: Any, rules: list[PriceRule]) -> PriceBook:
    return PriceBook(
        id=version["id"],
        note=version["note"],
        created_by_key_id=version["created_by_key_id"],
        created_at=version["created_at"],
        rules=[
            PriceRuleView(
                operation=r.operation,
                model=r.model,
                base=to_credits(r.base),
                ref_pixels=r.ref_pixels,
                ref_steps=r.ref_steps,
                cap=to_credits(r.cap),
            )
            for r in rules
        ],
    )


async def _load_book(services: Services, version_id: int | None) -> PriceBook:
    async with services.pool.acquire() as conn:
        found = await bq.price_version(conn, version_id)
    if found is None:
        raise NotFound("No such price version.")
    return _book(*found)


@get(
    "/v1/admin/prices",
    operation_id="getCurrentPrices",
    summary="Get the current price book",
    tags=["admin-prices"],
    opt=_ADMIN,
)
async def current_prices(services: NamedDependency[Services]) -> PriceBook:
    """The price book new requests are admitted with."""
    return await _load_book(services, None)


@post(
    "/v1/admin/prices",
    operation_id="publishPrices",
    summary="Publish a new price book",
    tags=["admin-prices"],
    opt=_ADMIN,
    status_code=201,
)
async def publish_prices(
    services: NamedDependency[Services], principal: NamedDependency[Principal], data: JSONBody[PriceBookCreate]
) -> PriceBook:
    """A new version of the whole book, used by every request admitted from now on. Jobs already
    admitted keep their price. Amounts are credits with up to 3 decimals."""
    rules = price_rules(data)
    async with services.pool.acquire() as conn, conn.transaction():
        version_id = await bq.insert_price_version(conn, rules, data.note, principal.key_id)
        found = await bq.price_version(conn, version_id)
    assert found is not None
    return _book(*found)


@get(
    "/v1/admin/prices/versions",
    operation_id="listPriceVersions",
    summary="List price versions",
    tags=["admin-prices"],
    opt={**_ADMIN, "problems": {422: "A parameter is invalid, or `cursor` is not one this API returned."}},
)
async def list_price_versions(
    services: NamedDependency[Services],
    cursor: FromQuery[str | None] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
) -> PriceVersionPage:
    """Every version of the price book, newest (current) first."""
    before = decode_id_cursor(cursor, INT32_MAX) if cursor else None
    async with services.pool.acquire() as conn:
        rows = await bq.price_versions_page(conn, before, limit + 1)
    data = [
        PriceVersionSummary(
            id=r["id"],
            note=r["note"],
            created_by_key_id=r["created_by_key_id"],
            created_at=r["created_at"],
            rules=r["rules"],
        )
        for r in rows[:limit]
    ]
    return PriceVersionPage(data=data, next_cursor=str(data[-1].id) if len(rows) > limit else None)


@get(
    "/v1/admin/prices/versions/{version_id:int}",
    operation_id="getPriceVersion",
    summary="Get a price version",
    tags=["admin-prices"],
    opt={**_ADMIN, "problems": {404: "No such price version."}},
)
async def get_price_version(
    services: NamedDependency[Services],
    # The column is a PostgreSQL integer: a larger id cannot exist, and must not reach the query.
    version_id: Annotated[int, PathParameter(ge=1, le=2**31 - 1)],
) -> PriceBook:
    """One version of the price book, e.g. the one a job was admitted with (`price_version_id`)."""
    return await _load_book(services, version_id)


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
    threshold = None if data.threshold is None else _credits(data.threshold, "threshold")
    async with services.pool.acquire() as conn, conn.transaction():
        row = await bq.set_low_balance_threshold(conn, tenant_id, threshold)
    if row is None:
        raise NotFound("No such tenant.")
    return _wallet_view(row)


routes = [
    current_prices,
    publish_prices,
    list_price_versions,
    get_price_version,
    admin_usage,
    set_low_balance_threshold,
]
