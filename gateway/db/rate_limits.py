"""SQL for the per-key request rate every API process and replica shares (migrations/0013).

The state is one number per key (GCRA's theoretical arrival time, `tat`), read and written in
one statement against the database's clock, so the processes' own clocks do not matter.
"""

from __future__ import annotations

from uuid import UUID

from gateway.db import Conn

# Insert (a key's first request) or move `tat` one interval later, only while that keeps it within
# the window of now; returns how far ahead of now it then is. No row: the request is refused, and
# nothing was written. $2 is the interval (60 s / limit), $3 the window (60 s) plus some
# microseconds' slack for float rounding, so a key's limit-th request in a burst is not refused by an ulp.
TAKE = """
WITH clock AS (SELECT extract(epoch FROM statement_timestamp())::float8 AS now)
INSERT INTO rate_limit_state AS s (key_id, tat)
SELECT $1, clock.now + $2 FROM clock
ON CONFLICT (key_id) DO UPDATE
SET tat = greatest(s.tat, EXCLUDED.tat - $2) + $2
WHERE greatest(s.tat, EXCLUDED.tat - $2) + $2 - (EXCLUDED.tat - $2) <= $3
RETURNING s.tat - extract(epoch FROM statement_timestamp())::float8
"""

AHEAD = """
SELECT tat - extract(epoch FROM statement_timestamp())::float8 FROM rate_limit_state WHERE key_id = $1
"""


async def take(conn: Conn, key_id: UUID, interval_s: float, window_s: float) -> float | None:
    """Take one request of `key_id`'s rate: seconds its bucket is then ahead of now, or None when
    the request is refused (nothing taken)."""
    ahead: float | None = await conn.fetchval(TAKE, key_id, interval_s, window_s)
    return ahead


async def ahead(conn: Conn, key_id: UUID) -> float:
    """Seconds `key_id`'s bucket is ahead of now (0: full, or never used)."""
    value: float | None = await conn.fetchval(AHEAD, key_id)
    return max(0.0, value or 0.0)
