"""Operator keys: /v1/admin/operator-keys (list, create, revoke), for operator keys only.

Revocation reaches every replica within the authenticator's cache TTL (2 s). The last active
operator key cannot be revoked (409): the CLI `gateway admin-keys create` would be the only way back.
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
from gateway.db import keys as q
from gateway.state import Services

_ADMIN = {"operator": True}


class OperatorKeyCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A new operator key: a label saying who or what holds it."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200, description="e.g. 'billing team'.")]


class OperatorKeyView(msgspec.Struct, kw_only=True):
    """An operator key as listed: never its secret, only its last characters."""

    id: UUID
    object: str = "operator_key"
    name: str
    hint: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


class OperatorKeyList(msgspec.Struct, kw_only=True):
    """Operator keys, oldest first, revoked ones included."""

    data: list[OperatorKeyView]


class CreatedOperatorKey(msgspec.Struct, kw_only=True):
    """The new operator key with its secret (`key`), shown this once."""

    id: UUID
    object: str = "operator_key"
    name: str
    key: str
    hint: str


def _view(row: Any) -> OperatorKeyView:
    return OperatorKeyView(
        id=row["id"],
        name=row["name"],
        hint=row["hint"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
        last_used_at=row["last_used_at"],
    )


@get(
    "/v1/admin/operator-keys",
    operation_id="listOperatorKeys",
    summary="List operator keys",
    tags=["admin-keys"],
    opt=_ADMIN,
)
async def list_operator_keys(*, services: NamedDependency[Services]) -> OperatorKeyList:
    """Every operator key, oldest first. Secrets are never shown again."""
    async with services.pool.acquire() as conn:
        rows = await q.list_operator_keys(conn)
    return OperatorKeyList(data=[_view(row) for row in rows])


@post(
    "/v1/admin/operator-keys",
    operation_id="createOperatorKey",
    summary="Create an operator key",
    tags=["admin-keys"],
    opt=_ADMIN,
    status_code=201,
)
async def create_operator_key(
    *, services: NamedDependency[Services], data: JSONBody[OperatorKeyCreate]
) -> CreatedOperatorKey:
    """A new operator key; the secret is in `key`, shown this once."""
    async with services.pool.acquire() as conn, conn.transaction():
        issued = await service.create_operator_key(conn, name=data.name)
    return CreatedOperatorKey(id=issued.id, name=issued.name, key=issued.key, hint=issued.hint)


@delete(
    "/v1/admin/operator-keys/{key_id:uuid}",
    operation_id="revokeOperatorKey",
    summary="Revoke an operator key",
    tags=["admin-keys"],
    opt={**_ADMIN, "problems": {404: "No such operator key.", 409: "It is the last active operator key."}},
    status_code=200,
)
async def revoke_operator_key(*, services: NamedDependency[Services], key_id: FromPath[UUID]) -> OperatorKeyView:
    """Revoke the key (revoking again changes nothing). The last active operator key is refused with 409."""
    async with services.pool.acquire() as conn, conn.transaction():
        row = await service.revoke_operator_key(conn, key_id)
    return _view(row)


routes = [list_operator_keys, create_operator_key, revoke_operator_key]
