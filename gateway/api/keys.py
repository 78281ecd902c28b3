"""Self-service keys: GET|POST /v1/keys, POST /v1/keys/{id}/rotate, DELETE /v1/keys/{id}.

A tenant manages its own keys with a `keys:manage` key. Another tenant's key id answers 404, exactly
like a missing one. After each change this replica's key cache is dropped, so the change holds here
at once and on other replicas within the cache TTL (2 s).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from gateway.auth import service
from gateway.auth.keys import Principal, Scope
from gateway.db import keys as q
from gateway.domain.money import from_credits, to_credits
from gateway.errors import NotFound, ValidationFailed
from gateway.state import Services

KeyName = Annotated[str, msgspec.Meta(min_length=1, max_length=200, description="A label, e.g. 'ci' or 'mobile app'.")]
Scopes = Annotated[list[Scope], msgspec.Meta(min_length=1, description="What the key may do.")]


class KeyCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A new key. A key can only grant scopes it has itself."""

    name: KeyName
    scopes: Scopes
    expires_at: Annotated[datetime, msgspec.Meta(tz=True, description="When the key stops working.")] | None = None
    rate_limit_per_minute: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None
    monthly_cap: (
        Annotated[float, msgspec.Meta(ge=0, le=1e12, description="Credits this key may spend per calendar month.")]
        | None
    ) = None


class KeyRotate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Rotation: how long the current secret keeps working next to the new one."""

    grace_period_s: Annotated[
        int,
        msgspec.Meta(
            ge=0,
            le=service.MAX_GRACE_PERIOD_S,
            description="Seconds the old secret keeps working (0: it stops at once; at most 30 days).",
        ),
    ] = 0


class KeyView(msgspec.Struct, kw_only=True):
    """A key as listed: never its secret, only the last characters of the newest one."""

    id: UUID
    object: str = "api_key"
    name: str
    scopes: list[str]
    hint: str
    rate_limit_per_minute: int
    monthly_cap: float | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class KeyList(msgspec.Struct, kw_only=True):
    """Keys, oldest first."""

    data: list[KeyView]


class CreatedKey(msgspec.Struct, kw_only=True):
    """A key with its secret (`key`), shown this once: it is stored only as a hash."""

    id: UUID
    object: str = "api_key"
    tenant_id: UUID
    name: str
    scopes: list[str]
    key: str
    hint: str


def key_view(row: Any) -> KeyView:
    """A key row as the API shows it (caps in credits)."""
    return KeyView(
        id=row["id"],
        name=row["name"],
        scopes=list(row["scopes"]),
        hint=row["hint"],
        rate_limit_per_minute=row["rate_limit_per_minute"],
        monthly_cap=None if row["monthly_cap"] is None else to_credits(row["monthly_cap"]),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        last_used_at=row["last_used_at"],
    )


def created_key(issued: service.IssuedKey) -> CreatedKey:
    """The once-only answer for a new or rotated key."""
    assert issued.tenant_id is not None
    return CreatedKey(
        id=issued.id,
        tenant_id=issued.tenant_id,
        name=issued.name,
        scopes=issued.scopes,
        key=issued.key,
        hint=issued.hint,
    )


def key_spec(data: KeyCreate) -> service.KeySpec:
    """The request as the service's spec (caps in millicredits)."""
    try:
        cap = None if data.monthly_cap is None else from_credits(data.monthly_cap)
    except ValueError as exc:
        raise ValidationFailed.field("monthly_cap", str(exc)) from exc
    return service.KeySpec(
        name=data.name,
        scopes=list(data.scopes),
        expires_at=data.expires_at,
        rate_limit_per_minute=data.rate_limit_per_minute or service.DEFAULT_RATE_LIMIT_PER_MINUTE,
        monthly_cap=cap,
    )


def _tenant(principal: Principal) -> UUID:
    # The guard lets only tenant keys reach these handlers; an operator has no tenant of its own
    # (Principal.tenant raises rather than let a None reach a query).
    return principal.tenant


@post(
    "/v1/keys",
    operation_id="createKey",
    summary="Create a key",
    tags=["keys"],
    opt={
        "scope": "keys:manage",
        "problems": {403: "The key lacks `keys:manage`, or asks for scopes the caller lacks (`missing_scopes`)."},
    },
    status_code=201,
)
async def create_key(
    services: NamedDependency[Services], principal: NamedDependency[Principal], data: JSONBody[KeyCreate]
) -> CreatedKey:
    """A new key for the caller's tenant, with at most the caller's scopes and limits (rate, monthly
    cap, expiry; omitted ones inherit the caller's). The secret is in `key`, shown this once."""
    spec = service.within_creator(key_spec(data), principal, rate_limit_given=data.rate_limit_per_minute is not None)
    async with services.pool.acquire() as conn, conn.transaction():
        issued = await service.create_tenant_key(
            conn,
            tenant_id=_tenant(principal),
            spec=spec,
            created_by_key_id=principal.key_id,
            grantable=principal.scopes,
        )
    return created_key(issued)


@get("/v1/keys", operation_id="listKeys", summary="List keys", tags=["keys"], opt={"scope": "keys:manage"})
async def list_keys(services: NamedDependency[Services], principal: NamedDependency[Principal]) -> KeyList:
    """Every key of the caller's tenant, revoked ones included. Secrets are never shown again."""
    async with services.pool.acquire() as conn:
        rows = await q.list_tenant_keys(conn, _tenant(principal))
    return KeyList(data=[key_view(r) for r in rows])


@post(
    "/v1/keys/{key_id:uuid}/rotate",
    operation_id="rotateKey",
    summary="Rotate a key",
    tags=["keys"],
    opt={
        "scope": "keys:manage",
        "problems": {
            403: "The key lacks `keys:manage`, or the key to rotate is not the caller and has wider scopes, a "
            "higher rate limit, a larger monthly cap or a later expiry than the caller (`beyond_caller`).",
            404: "No such key.",
            409: "The key is revoked or expired.",
        },
    },
    status_code=200,
)
async def rotate_key(
    services: NamedDependency[Services],
    principal: NamedDependency[Principal],
    key_id: FromPath[UUID],
    data: JSONBody[KeyRotate],
) -> CreatedKey:
    """A new secret for the key (same id, name, scopes and limits). The old secret keeps working for
    `grace_period_s` seconds, so clients can switch over without downtime. Send `{}` for no grace.

    A key may rotate itself, or another key whose scopes, rate limit, monthly cap and expiry are
    within its own (403 otherwise): the answer carries the new secret."""
    async with services.pool.acquire() as conn, conn.transaction():
        issued = await service.rotate(
            conn, tenant_id=_tenant(principal), key_id=key_id, caller=principal, grace_period_s=data.grace_period_s
        )
    services.auth.invalidate()
    return created_key(issued)


@delete(
    "/v1/keys/{key_id:uuid}",
    operation_id="revokeKey",
    summary="Revoke a key",
    tags=["keys"],
    opt={"scope": "keys:manage", "problems": {404: "No such key."}},
    status_code=200,
)
async def revoke_key(
    services: NamedDependency[Services], principal: NamedDependency[Principal], key_id: FromPath[UUID]
) -> KeyView:
    """Revoke the key: every secret of it stops working (on other replicas within 2 s). Returns the
    revoked key; revoking again changes nothing."""
    tenant_id = _tenant(principal)
    async with services.pool.acquire() as conn, conn.transaction():
        await service.revoke(conn, tenant_id=tenant_id, key_id=key_id)
        row = await q.get_tenant_key(conn, key_id, tenant_id)
    services.auth.invalidate()
    if row is None:
        raise NotFound("No such key.")
    return key_view(row)


routes = [create_key, list_keys, rotate_key, revoke_key]
