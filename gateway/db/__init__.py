"""Database access: the embedded server, the pool, migrations and the queries each area owns."""

from __future__ import annotations

from typing import Any, TypeAlias
from uuid import UUID

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# Queries take either a bare connection (CLI, migrations, tests) or one borrowed from the pool.
Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"


def require_tenant(tenant_id: object) -> UUID:
    """The tenant id a tenant query filters on; anything else (None above all) is a TypeError.

    Tenant queries never read "no tenant" as "every tenant": operators have queries of their own.
    A runtime check, not an `assert`, so it holds under `python -O` too."""
    if not isinstance(tenant_id, UUID):
        raise TypeError(f"a tenant query needs a tenant id, got {tenant_id!r}")
    return tenant_id


def field_arrays(rows: list[Any], fields: tuple[str, ...]) -> list[list[Any]]:
    """One array per field of `rows`, in `fields` order: the parameters of a statement's `unnest(...)`."""
    return [[getattr(row, field) for row in rows] for field in fields]
