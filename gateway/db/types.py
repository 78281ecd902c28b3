"""The database driver's types and exceptions that code outside gateway/db may name.

Only gateway/db imports asyncpg (tests/unit/test_database_boundary.py holds every module to it):
what the rest of the gateway needs of the driver it takes from here, so a change of driver or of
its version is seen in one place. Queries that return domain Structs need none of this; `Row` is
for the statements whose rows stay rows (a job as gateway/db/jobs.JOB_COLUMNS reads it, the
settlement and admission statements' results).
"""

from __future__ import annotations

from typing import TypeAlias

import asyncpg

# One row of a statement: read by column name (`row["id"]`).
Row: TypeAlias = asyncpg.Record

# An error the server reported (a failed statement, a violated constraint, a terminated session).
PostgresError = asyncpg.PostgresError
# The connection was unusable from the client's side (closed, or mid-way through another operation).
# With OSError (refused, reset) and PostgresError, what a database outage raises.
InterfaceError = asyncpg.InterfaceError
# A check constraint refused the statement; `constraint_name` says which.
CheckViolationError = asyncpg.CheckViolationError

# What a query raises while the database cannot be reached or is going away: the socket's errors
# (refused, reset), the server's (terminated by an administrator, shutting down) and the driver's.
# A loop that outlives an outage (a sweeper, a dispatcher) catches these and tries again later.
DATABASE_ERRORS: tuple[type[Exception], ...] = (OSError, PostgresError, InterfaceError)

__all__ = ["DATABASE_ERRORS", "CheckViolationError", "InterfaceError", "PostgresError", "Row"]
