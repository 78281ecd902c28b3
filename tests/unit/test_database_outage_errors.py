"""Which errors read as "the database is unavailable" (503 with Retry-After) and which stay 500s."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest
from asyncpg import exceptions as pg

from gateway.db.outage import database_unavailable
from gateway.errors import DatabaseUnavailable, _to_gateway_error


def test_lost_connections_and_restarting_servers_are_unavailable() -> None:
    for exc in (
        pg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        pg.CannotConnectNowError("the database system is starting up"),
        pg.AdminShutdownError("terminating connection due to administrator command"),
        pg.TooManyConnectionsError("too many clients"),
        asyncpg.InterfaceError("connection is closed"),
    ):
        error = _to_gateway_error(exc)
        assert isinstance(error, DatabaseUnavailable), exc
        assert error.http_status == 503
        assert int(error.headers["Retry-After"]) >= 1


def test_a_refused_socket_counts_only_when_asyncpg_raised_it(tmp_path: Path) -> None:
    async def connect() -> None:
        await asyncpg.connect(f"postgresql://x@/db?host={tmp_path}&port=1")

    with pytest.raises(FileNotFoundError) as refused:
        asyncio.run(connect())
    assert database_unavailable(refused.value)
    assert not database_unavailable(FileNotFoundError(2, "No such file", "/data/blobs/x"))
    assert not database_unavailable(OSError(28, "No space left on device"))


def test_a_query_fault_is_not_an_outage() -> None:
    assert not database_unavailable(pg.UniqueViolationError("duplicate key"))
    assert not database_unavailable(
        asyncpg.InterfaceError("cannot perform operation: another operation is in progress")
    )
    assert _to_gateway_error(pg.UniqueViolationError("duplicate key")).http_status == 500
