"""The per-key rate limit is one bucket in PostgreSQL: authenticators (processes) share it, and a
busy key's process takes a lease of requests at once instead of a statement per request."""

from __future__ import annotations

import math
import time
from uuid import UUID, uuid4

from gateway.auth.keys import LEASE_S, KeyAuthenticator, Principal, lease_size
from gateway.db.pool import Pool


def _principal(limit: int) -> Principal:
    return Principal("tenant", uuid4(), uuid4(), frozenset(), limit)


async def _row(pool: Pool, key_id: UUID) -> tuple[int, float]:
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT granted, seen FROM rate_limit_state WHERE key_id = $1", key_id)
    assert row is not None
    return row["granted"], row["seen"]


async def test_processes_sharing_a_key_let_through_no_more_than_its_limit(auth_pool: Pool) -> None:
    limit = 120  # leases of 2: each process holds a request of the bucket at times
    principal = _principal(limit)
    processes = [KeyAuthenticator(pool=auth_pool, ttl_s=0.0) for _ in range(3)]

    started = time.monotonic()
    answers = [await processes[i % 3].rate_check(principal) for i in range(2 * limit)]
    elapsed = time.monotonic() - started

    allowed = sum(1 for ok, _, _ in answers if ok)
    # Never more than the limit plus what refilled meanwhile; fewer by at most a lease per process.
    assert allowed <= limit + math.floor(elapsed * limit / 60), (allowed, elapsed)
    assert allowed >= limit - 3 * (lease_size(limit) - 1)
    refused = [a for a in answers if not a[0]]
    assert refused
    assert all(wait > 0 and remaining == 0 for _, wait, remaining in refused)


async def test_a_busy_key_takes_a_lease_in_one_statement_and_counts_it_down(auth_pool: Pool) -> None:
    limit = 600  # a second's refill: leases of 10
    principal = _principal(limit)
    auth = KeyAuthenticator(pool=auth_pool, ttl_s=0.0)

    first = await auth.rate_check(principal)
    granted, seen = await _row(auth_pool, principal.key_id)
    rest = [await auth.rate_check(principal) for _ in range(granted - 1)]

    assert granted == lease_size(limit) == 10
    assert (await _row(auth_pool, principal.key_id))[1] == seen  # the lease was spent without a statement
    assert [remaining for _, _, remaining in [first, *rest]] == list(range(limit - 1, limit - 11, -1))
    assert (await auth.rate_check(principal))[0]
    assert (await _row(auth_pool, principal.key_id))[1] > seen  # spent: the next request takes a new lease


async def test_an_unspent_lease_is_dropped_after_a_second(auth_pool: Pool) -> None:
    now = [100.0]
    auth = KeyAuthenticator(pool=auth_pool, ttl_s=0.0, clock=lambda: now[0])
    principal = _principal(6000)

    await auth.rate_check(principal)
    _, seen = await _row(auth_pool, principal.key_id)
    await auth.rate_check(principal)
    assert (await _row(auth_pool, principal.key_id))[1] == seen
    now[0] += LEASE_S
    await auth.rate_check(principal)

    assert (await _row(auth_pool, principal.key_id))[1] > seen


async def test_a_slow_key_is_checked_against_the_database_on_every_request(auth_pool: Pool) -> None:
    auth = KeyAuthenticator(pool=auth_pool, ttl_s=0.0)
    principal = _principal(60)  # under 120 a minute: no lease

    answers = [await auth.rate_check(principal) for _ in range(3)]
    granted, _ = await _row(auth_pool, principal.key_id)

    assert granted == lease_size(60) == 1
    assert [(ok, remaining) for ok, _, remaining in answers] == [(True, 59), (True, 58), (True, 57)]
