"""The asyncpg pool. Only gateway/db imports asyncpg."""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec


async def _init_connection(conn: asyncpg.Connection[Any]) -> None:
    # jsonb columns round-trip through msgspec, the same codec as the API, so no dicts are re-encoded twice.
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda value: b"\x01" + msgspec.json.encode(value),
        decoder=lambda data: msgspec.json.decode(data[1:]),
        schema="pg_catalog",
        format="binary",
    )


async def _reset_connection(conn: asyncpg.Connection[Any]) -> None:
    """Nothing to reset: asyncpg has already rolled back an open transaction and dropped listeners.

    The default reset runs `RESET ALL; UNLISTEN *; CLOSE ALL; pg_advisory_unlock_all()`, one more
    round trip on every release (several per request). No pooled connection keeps session state:
    settings are per transaction, LISTEN uses its own connection, and the one session-level advisory
    lock (migrations) is released by its holder."""


Pool = asyncpg.Pool


async def create_pool(dsn: str, *, min_size: int, max_size: int, statement_cache_size: int) -> Pool:
    """A pool whose connections decode jsonb with msgspec.

    Behind PgBouncer in transaction mode (`db_statement_cache_size = 0`, GATEWAY_DB_STATEMENT_CACHE_SIZE=0):
    each transaction may run on another server connection, so nothing may outlive one. With no
    statement cache asyncpg prepares every query as the unnamed statement, which lives only until
    the next one, instead of named statements that the next server connection would not know.
    The rest of the gateway keeps no session state either: migrations take transaction-scoped
    advisory locks, and the runner's LISTEN is only a wake-up hint (it also polls every second).
    """
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        statement_cache_size=statement_cache_size,
        init=_init_connection,
        reset=_reset_connection,
        server_settings={"application_name": "gateway"},
    )
    assert pool is not None
    return pool
