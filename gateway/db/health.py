"""The database check of `gateway doctor`: can we connect, and which migrations are pending."""

from __future__ import annotations

import asyncio

import asyncpg
import msgspec

from gateway.db.migrations import discover, pending_migrations
from gateway.db.outage import database_unavailable


class DatabaseState(msgspec.Struct, frozen=True):
    """`error` set: unreachable (or refused us); otherwise the server and the migrations' state."""

    server_version: str = ""
    applied: int = 0
    pending: list[str] = msgspec.field(default_factory=list)
    error: str | None = None


async def database_state(dsn: str, timeout_s: float = 5.0) -> DatabaseState:
    """Connect once (no pool), read the server version and the pending migrations."""
    try:
        conn = await asyncpg.connect(dsn, timeout=timeout_s)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        why = "unreachable" if database_unavailable(exc) or isinstance(exc, OSError | TimeoutError) else "refused"
        return DatabaseState(error=f"{why}: {type(exc).__name__}: {exc}")
    try:
        version = await asyncio.wait_for(conn.fetchval("SHOW server_version"), timeout_s)
        pending = await pending_migrations(conn)
    finally:
        await conn.close()
    return DatabaseState(server_version=str(version), applied=len(discover()) - len(pending), pending=pending)
