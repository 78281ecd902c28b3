"""Database access: the embedded server, the pool, migrations and the queries each area owns."""

from __future__ import annotations

from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# Queries take either a bare connection (CLI, migrations, tests) or one borrowed from the pool.
Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"


def field_arrays(rows: list[Any], fields: tuple[str, ...]) -> list[list[Any]]:
    """One array per field of `rows`, in `fields` order: the parameters of a statement's `unnest(...)`."""
    return [[getattr(row, field) for row in rows] for field in fields]
