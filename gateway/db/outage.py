"""Which errors mean "the database is unreachable or restarting": a 503 to retry, not a 500.

Translated here, by type, because only gateway/db knows asyncpg. A lost connection surfaces as
asyncpg's connection-class errors (SQLSTATE class 08), a server shutting down, crashed or starting
up as class 57P, a full server as 53300, and a refused or reset socket as the OS's own errors,
raised from inside asyncpg. A query's own fault (a constraint, a syntax error) is none of these.
"""

from __future__ import annotations

from types import TracebackType

import asyncpg
from asyncpg import exceptions as pg

# Seconds a client is asked to wait: a crash restart of PostgreSQL takes about one.
RETRY_AFTER_S = 2

# Every error a statement can raise for want of a working database, whatever the cause (the socket's,
# the server's, the driver's): for callers that treat them alike without importing asyncpg.
DATABASE_ERRORS: tuple[type[Exception], ...] = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)

_SERVER_GONE: tuple[type[BaseException], ...] = (
    pg.PostgresConnectionError,  # 08xxx: connection lost mid-query, or refused by the server
    pg.OperatorInterventionError,  # 57P01-57P03: shut down, crashed, still starting up
    pg.TooManyConnectionsError,
)


def _raised_in_asyncpg(tb: TracebackType | None) -> bool:
    while tb is not None:
        if str(tb.tb_frame.f_globals.get("__name__", "")).startswith("asyncpg"):
            return True
        tb = tb.tb_next
    return False


def database_unavailable(exc: BaseException) -> bool:
    """Whether `exc` (or what it was raised from) says the database cannot be reached right now."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _SERVER_GONE):
            return True
        if isinstance(current, asyncpg.InterfaceError) and "connection is closed" in str(current):
            return True
        # Refused, reset, or the Unix socket missing while the server restarts; only when asyncpg
        # raised it, so that a blob store's disk error stays what it is.
        if isinstance(current, OSError) and _raised_in_asyncpg(current.__traceback__):
            return True
        current = current.__cause__ or current.__context__
    return False
