"""Operator price API: the versioned price book (operator keys only).

Prices are whole books: publishing one makes a new version that every later admission uses,
while jobs already admitted keep the unit price (and version) they were admitted with.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import get, post
from litestar.di import NamedDependency
from litestar.params import FromQuery, JSONBody, PathParameter, QueryParameter

from gateway.api.cursors import SerialKey, decode_cursor, encode_cursor
from gateway.auth.keys import Principal
from gateway.db import billing as bq
from gateway.domain.generation import OPERATIONS, Operation
from gateway.domain.money import PriceRule, from_credits, to_credits
from gateway.errors import NotFound, ValidationFailed
from gateway.state import Services

_ADMIN = {"operator": True}
# Far above any sane price, far below bigint millicredits.
_MAX_PRICE = 1e6


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


def credits_field(value: float, field: str) -> int:
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
        base, cap = credits_field(spec.base, f"{where}.base"), credits_field(spec.cap, f"{where}.cap")
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
    before = decode_cursor(cursor, SerialKey).id if cursor else None
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
    return PriceVersionPage(data=data, next_cursor=encode_cursor(SerialKey(data[-1].id)) if len(rows) > limit else None)


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


routes = [current_prices, publish_prices, list_price_versions, get_price_version]
