"""Operator API for tenants: /v1/admin/tenants, their keys and their credits (operator keys only).

Every credit change is a ledger entry that names the operator key that made it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from gateway.api.cursors import CreatedAtKey, decode_cursor, encode_cursor
from gateway.api.keys import CreatedKey, KeyCreate, KeyList, created_key, key_spec, key_view
from gateway.auth import service
from gateway.auth.keys import Principal
from gateway.db import keys as q
from gateway.domain.money import from_credits, to_credits
from gateway.errors import NotFound, ValidationFailed
from gateway.state import Services

_ADMIN = {"operator": True}
# Above any real balance, far below bigint millicredits: a typo cannot overflow the ledger.
_MAX_CREDITS = 1e12


class TenantCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A new tenant: its name, initial credits and how many jobs it may run at once."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    credits: Annotated[float, msgspec.Meta(ge=0, le=_MAX_CREDITS, description="Initial top-up, in credits.")] = 0.0
    max_concurrent_jobs: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = service.DEFAULT_MAX_CONCURRENT_JOBS


class TenantView(msgspec.Struct, kw_only=True):
    """A tenant with its wallet, in credits (`available` = `balance` - `held`)."""

    id: UUID
    object: str = "tenant"
    name: str
    status: str
    max_concurrent_jobs: int
    balance: float
    held: float
    available: float
    created_at: datetime
    updated_at: datetime


class CreatedTenant(msgspec.Struct, kw_only=True):
    """The new tenant and its first key (every scope), whose secret is shown this once."""

    tenant: TenantView
    key: CreatedKey


class TenantPage(msgspec.Struct, kw_only=True):
    """One page of tenants, newest first; `next_cursor` is null on the last page."""

    data: list[TenantView]
    next_cursor: str | None


class CreditChange(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A top-up or an adjustment of a tenant's credits, with the reason kept in the ledger."""

    amount: Annotated[
        float,
        msgspec.Meta(
            ge=-_MAX_CREDITS,
            le=_MAX_CREDITS,
            description="Credits (up to 3 decimals). A top-up is positive; an adjustment may be negative.",
        ),
    ]
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=1000, description="Why; kept in the ledger.")]
    kind: service.CreditKind = "topup"


class LedgerEntryView(msgspec.Struct, kw_only=True):
    """The ledger entry a credit change wrote, naming the operator key that made it."""

    id: int
    object: str = "ledger_entry"
    tenant_id: UUID
    kind: str
    amount: float
    balance_after: float
    reason: str
    operator_key_id: UUID | None
    created_at: datetime


def _tenant_view(row: Any) -> TenantView:
    return TenantView(
        id=row["id"],
        name=row["name"],
        status=row["status"],
        max_concurrent_jobs=row["max_concurrent_jobs"],
        balance=to_credits(row["balance"]),
        held=to_credits(row["held"]),
        available=to_credits(row["balance"] - row["held"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _millicredits(credits: float, field: str) -> int:
    try:
        return from_credits(credits)
    except ValueError as exc:
        raise ValidationFailed.field(field, str(exc)) from exc


async def _load_tenant(services: Services, tenant_id: UUID) -> TenantView:
    async with services.pool.acquire() as conn:
        row = await q.get_tenant(conn, tenant_id)
    if row is None:
        raise NotFound("No such tenant.")
    return _tenant_view(row)


@post(
    "/v1/admin/tenants",
    operation_id="createTenant",
    summary="Create a tenant",
    tags=["admin-tenants"],
    opt=_ADMIN,
    status_code=201,
)
async def create_tenant(
    services: NamedDependency[Services], principal: NamedDependency[Principal], data: JSONBody[TenantCreate]
) -> CreatedTenant:
    """A tenant with its wallet (the initial credits as a top-up ledger entry) and a first key with every
    scope. The key's secret is in `key.key`, shown this once."""
    credits = _millicredits(data.credits, "credits")
    async with services.pool.acquire() as conn, conn.transaction():
        tenant_id, issued = await service.create_tenant(
            conn,
            name=data.name,
            credits=credits,
            max_concurrent_jobs=data.max_concurrent_jobs,
            operator_key_id=principal.key_id,
        )
        row = await q.get_tenant(conn, tenant_id)
    return CreatedTenant(tenant=_tenant_view(row), key=created_key(issued))


@get(
    "/v1/admin/tenants",
    operation_id="listTenants",
    summary="List tenants",
    tags=["admin-tenants"],
    opt={**_ADMIN, "problems": {422: "A parameter is invalid, or `cursor` is not one this API returned."}},
)
async def list_tenants(
    services: NamedDependency[Services],
    cursor: FromQuery[str | None] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
) -> TenantPage:
    """Newest first; pass `next_cursor` back as `cursor` for the next page."""
    before = decode_cursor(cursor, CreatedAtKey).pair() if cursor else None
    async with services.pool.acquire() as conn:
        rows = await q.list_tenants(conn, before=before, limit=limit + 1)
    last = rows[limit - 1] if len(rows) > limit else None
    return TenantPage(
        data=[_tenant_view(r) for r in rows[:limit]],
        next_cursor=encode_cursor(CreatedAtKey(last["created_at"], last["id"])) if last else None,
    )


@get(
    "/v1/admin/tenants/{tenant_id:uuid}",
    operation_id="getTenant",
    summary="Get a tenant",
    tags=["admin-tenants"],
    opt={**_ADMIN, "problems": {404: "No such tenant."}},
)
async def get_tenant(services: NamedDependency[Services], tenant_id: FromPath[UUID]) -> TenantView:
    """One tenant with its wallet."""
    return await _load_tenant(services, tenant_id)


@post(
    "/v1/admin/tenants/{tenant_id:uuid}/suspend",
    operation_id="suspendTenant",
    summary="Suspend a tenant",
    tags=["admin-tenants"],
    opt={**_ADMIN, "problems": {404: "No such tenant."}},
    status_code=200,
)
async def suspend_tenant(services: NamedDependency[Services], tenant_id: FromPath[UUID]) -> TenantView:
    """Every key of the tenant stops authenticating (on other replicas within 2 s); running jobs finish."""
    async with services.pool.acquire() as conn, conn.transaction():
        await service.set_suspended(conn, tenant_id=tenant_id, suspended=True)
    services.auth.invalidate()
    return await _load_tenant(services, tenant_id)


@post(
    "/v1/admin/tenants/{tenant_id:uuid}/resume",
    operation_id="resumeTenant",
    summary="Resume a tenant",
    tags=["admin-tenants"],
    opt={**_ADMIN, "problems": {404: "No such tenant."}},
    status_code=200,
)
async def resume_tenant(services: NamedDependency[Services], tenant_id: FromPath[UUID]) -> TenantView:
    """The tenant's keys work again (those not revoked or expired meanwhile)."""
    async with services.pool.acquire() as conn, conn.transaction():
        await service.set_suspended(conn, tenant_id=tenant_id, suspended=False)
    services.auth.invalidate()
    return await _load_tenant(services, tenant_id)


@get(
    "/v1/admin/tenants/{tenant_id:uuid}/keys",
    operation_id="listTenantKeys",
    summary="List a tenant's keys",
    tags=["admin-tenants"],
    opt={**_ADMIN, "problems": {404: "No such tenant."}},
)
async def list_tenant_keys(services: NamedDependency[Services], tenant_id: FromPath[UUID]) -> KeyList:
    """Every key of the tenant, revoked ones included; never a secret."""
    async with services.pool.acquire() as conn:
        if await q.get_tenant(conn, tenant_id) is None:
            raise NotFound("No such tenant.")
        rows = await q.list_tenant_keys(conn, tenant_id)
    return KeyList(data=[key_view(r) for r in rows])


@post(
    "/v1/admin/tenants/{tenant_id:uuid}/keys",
    operation_id="createTenantKey",
    summary="Create a key for a tenant",
    tags=["admin-tenants"],
    opt={**_ADMIN, "problems": {404: "No such tenant."}},
    status_code=201,
)
async def create_tenant_key(
    services: NamedDependency[Services], tenant_id: FromPath[UUID], data: JSONBody[KeyCreate]
) -> CreatedKey:
    """A key with any scopes for the tenant; the secret is in `key`, shown this once."""
    async with services.pool.acquire() as conn, conn.transaction():
        issued = await service.create_tenant_key(conn, tenant_id=tenant_id, spec=key_spec(data))
    return created_key(issued)


@post(
    "/v1/admin/tenants/{tenant_id:uuid}/credits",
    operation_id="changeTenantCredits",
    summary="Top up or adjust credits",
    tags=["admin-tenants"],
    opt={
        **_ADMIN,
        "problems": {
            404: "No such tenant.",
            409: "The adjustment would take the wallet below the credits held for running jobs.",
        },
    },
    status_code=201,
)
async def change_credits(
    services: NamedDependency[Services],
    principal: NamedDependency[Principal],
    tenant_id: FromPath[UUID],
    data: JSONBody[CreditChange],
) -> LedgerEntryView:
    """A top-up (positive) or an adjustment (either sign) as a ledger entry naming this operator key.
    Taking away credits that are held for running jobs, or that the tenant does not have, answers 409."""
    amount = _millicredits(data.amount, "amount")
    async with services.pool.acquire() as conn, conn.transaction():
        entry = await service.adjust_credits(
            conn,
            tenant_id=tenant_id,
            amount=amount,
            kind=data.kind,
            reason=data.reason,
            operator_key_id=principal.key_id,
        )
    return LedgerEntryView(
        id=entry["id"],
        tenant_id=entry["tenant_id"],
        kind=entry["kind"],
        amount=to_credits(entry["amount"]),
        balance_after=to_credits(entry["balance_after"]),
        reason=entry["reason"],
        operator_key_id=entry["operator_key_id"],
        created_at=entry["created_at"],
    )


routes = [
    create_tenant,
    list_tenants,
    get_tenant,
    suspend_tenant,
    resume_tenant,
    list_tenant_keys,
    create_tenant_key,
    change_credits,
]
