"""SQL for the per-key request rate every API process and replica shares (migrations/0013).

The state is one number per key (GCRA's theoretical arrival time, `tat`), read and written in
one statement against the database's clock, so the processes' own clocks do not matter.
"""

from __future__ import annotations

from uuid import UUID

import msgspec

from gateway.db import Conn

# Take up to $4 requests: insert the key's row (its first take, from a full bucket) or move `tat`
# one interval ($2, 60 s / limit) later per request taken, as many as fit within the window ($3)
# of now. No row back: not even one fits, the request is refused and nothing was written. In SET,
# `s` is the row before the update; EXCLUDED.seen is now. $3 carries some microseconds' slack for
# float rounding, so a key's limit-th request in a burst is not refused by an ulp.
TAKE = """
WITH clock AS (SELECT extract(epoch FROM statement_timestamp())::float8 AS now)
INSERT INTO rate_limit_state AS s (key_id, tat, granted, seen)
SELECT $1, clock.now + $2::float8 * $4::int, $4::int, clock.now FROM clock
ON CONFLICT (key_id) DO UPDATE
SET granted = least($4::int, floor(($3::float8 - greatest(s.tat - EXCLUDED.seen, 0)) / $2::float8))::int,
    tat = greatest(s.tat, EXCLUDED.seen)
          + $2::float8 * least($4::int, floor(($3::float8 - greatest(s.tat - EXCLUDED.seen, 0)) / $2::float8)),
    seen = EXCLUDED.seen
WHERE greatest(s.tat - EXCLUDED.seen, 0) + $2::float8 <= $3::float8
RETURNING s.granted, s.tat - s.seen AS ahead_s
"""

AHEAD = """
SELECT tat - extract(epoch FROM statement_timestamp())::float8 FROM rate_limit_state WHERE key_id = $1
"""


class Taken(msgspec.Struct, frozen=True):
    """Requests taken from a key's bucket, and how far the bucket is then ahead of now (seconds)."""

    granted: int
    ahead_s: float


async def take(conn: Conn, key_id: UUID, interval_s: float, window_s: float, at_most: int = 1) -> Taken | None:
    """Take between 1 and `at_most` requests of `key_id`'s rate, as many as the bucket holds, or
    None when it holds none (the request is refused; nothing taken). `at_most` must not exceed the
    limit: a key's first take comes from a full bucket unchecked."""
    row = await conn.fetchrow(TAKE, key_id, interval_s, window_s, at_most)
    return None if row is None else Taken(row["granted"], row["ahead_s"])


async def ahead(conn: Conn, key_id: UUID) -> float:
    """Seconds `key_id`'s bucket is ahead of now (0: full, or never used)."""
    value: float | None = await conn.fetchval(AHEAD, key_id)
    return max(0.0, value or 0.0)
