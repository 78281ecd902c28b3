"""Resolving a presented key to a principal: cached lookups, validity, scopes and rate limits.

Lookups are cached for `key_cache_ttl_s` (2 s by default): revocation, expiry of a rotated
secret and tenant suspension are seen by every replica within that time, with no invalidation
protocol to get wrong. Validity (expiry, grace period) is evaluated on every request against the
cached row, so a key expires on the second. `last_used_at` is written in batches.

A key's rate limit is one bucket for the whole deployment, kept in PostgreSQL (db/rate_limits.py):
every process and replica takes from it, so `--workers N` on R replicas still allows the key its
`rate_limit_per_minute`, not N x R times it. A busy key's process takes up to a second's refill at
once (a lease) and spends it locally for at most a second, so the statement is not paid on every
request; a lease is taken before it is spent, so no process ever lets more than the limit through.
"""

from __future__ import annotations

import hmac
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

from gateway.auth import tokens
from gateway.auth.limits import KeyedLimiter
from gateway.db import keys as q
from gateway.db import rate_limits, require_tenant
from gateway.db.pool import Pool
from gateway.db.types import Row
from gateway.errors import RateLimited, Unauthenticated

log = logging.getLogger(__name__)

SCOPES = ("generate", "jobs:read", "files:read", "usage:read", "keys:manage")
Scope = Literal["generate", "jobs:read", "files:read", "usage:read", "keys:manage"]

_GENERIC = "The API key is missing, malformed, unknown, expired or revoked."
_CACHE_LIMIT = 100_000
# Failed authentications one client address may make per minute. Well-formed random keys are cheap
# to make (the checksum is public) and each unknown one costs a database lookup.
FAILED_AUTH_PER_MINUTE = 60
# A key's bucket holds one minute's worth of its requests and refills continuously.
RATE_WINDOW_S = 60.0
# Float rounding of epoch seconds (an ulp is about 0.2 µs) must not refuse the last request of a burst.
_RATE_SLACK_S = 1e-5
# A lease is at most one second's refill of the key's bucket (limit / 60, so keys under 120 a minute
# take one request at a time), at most this many, and is dropped unspent after LEASE_S: what other
# processes cannot use meanwhile is bounded by a second's refill per process.
LEASE_MAX = 50
LEASE_S = 1.0


def lease_size(rate_limit_per_minute: int) -> int:
    """Requests a process takes from a key's shared bucket at once."""
    return max(1, min(LEASE_MAX, rate_limit_per_minute // 60))


@dataclass(frozen=True)
class Principal:
    """Who is calling: a tenant key or an operator key."""

    kind: Literal["tenant", "operator"]
    key_id: UUID
    tenant_id: UUID | None
    scopes: frozenset[str]
    rate_limit_per_minute: int
    monthly_cap: int | None = None
    expires_at: datetime | None = None

    @property
    def tenant(self) -> UUID:
        """The tenant of a tenant key, for tenant queries; a TypeError for an operator key, which has
        none (and must never stand for "every tenant")."""
        return require_tenant(self.tenant_id)


@dataclass
class _Cached:
    row: Row | None
    fetched: float


@dataclass
class _Lease:
    """Requests this process took from a key's shared bucket and has not spent yet."""

    left: int
    shared_remaining: int  # what the shared bucket still held when they were taken
    expires: float


@dataclass
class KeyAuthenticator:
    """Per-app key resolver. Holds the lookup cache, the failed-authentication limits and the
    last-used batch; the keys' rate limits live in the database, shared by every process."""

    pool: Pool
    ttl_s: float
    clock: Callable[[], float] = time.monotonic
    cache_limit: int = _CACHE_LIMIT
    failed_auth_per_minute: float = FAILED_AUTH_PER_MINUTE
    # Least recently used first: a full cache forgets one entry per new one, not everything at once.
    _cache: OrderedDict[bytes, _Cached] = field(default_factory=OrderedDict)
    _failures: KeyedLimiter = field(init=False)
    _leases: OrderedDict[UUID, _Lease] = field(default_factory=OrderedDict)
    _used_tenant: set[UUID] = field(default_factory=set)
    _used_operator: set[UUID] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._failures = KeyedLimiter(self.failed_auth_per_minute, clock=self.clock)

    async def authenticate(self, presented: str | None, *, client: str | None = None) -> Principal:
        """The principal for `presented`, or `Unauthenticated` with one generic message.

        The precise reason goes to the log (never the key itself). With `client` (the caller's
        address), each failure counts against it, and an address over `failed_auth_per_minute`
        failures is refused with `RateLimited` before its key costs a database lookup; a key this
        replica has just seen (a fresh cache entry) still goes through, so others behind the same
        address keep working."""
        if client is not None:
            wait = self._failures.wait_s(client)
            if wait > 0 and not (presented and self._cached_fresh(tokens.hash_key(presented))):
                log.info("authentication refused: %s is over its failed-authentication limit", client)
                raise RateLimited(
                    "Too many failed authentications from this address; try again later.",
                    headers={"Retry-After": str(max(1, math.ceil(wait)))},
                    limit="failed_authentications",
                )
        try:
            if not presented:
                raise self._refuse("no key presented")
            kind = tokens.parse_kind(presented)
            if kind is None:
                raise self._refuse("malformed key")
            return await self.authenticate_hash(kind, tokens.hash_key(presented), hint=tokens.hint(presented))
        except Unauthenticated:
            if client is not None:
                self._failures.spend(client)
            raise

    async def authenticate_hash(self, kind: tokens.KeyKind, secret_hash: bytes, *, hint: str = "") -> Principal:
        """The principal whose secret hashes to `secret_hash`, under the same rules as `authenticate`.

        For callers that keep only the hash, such as a dashboard session re-checking its key."""
        row = await self._lookup(kind, secret_hash)
        # The row came from an index lookup on this hash; compare again in constant time anyway.
        if row is None or not hmac.compare_digest(row["secret_hash"], secret_hash):
            raise self._refuse(f"unknown {kind} key ...{hint}")
        now = datetime.now(UTC)
        if row["revoked_at"] is not None and row["revoked_at"] <= now:
            raise self._refuse(f"revoked key {row['id']}")
        if kind == "operator":
            self._used_operator.add(row["id"])
            return Principal("operator", row["id"], None, frozenset(), rate_limit_per_minute=60_000)
        if row["expires_at"] is not None and row["expires_at"] <= now:
            raise self._refuse(f"expired key {row['id']}")
        if row["retires_at"] is not None and row["retires_at"] <= now:
            raise self._refuse(f"rotated-out secret of key {row['id']}")
        if row["tenant_status"] != "active":
            raise self._refuse(f"tenant {row['tenant_id']} is {row['tenant_status']}")
        self._used_tenant.add(row["id"])
        return Principal(
            "tenant",
            row["id"],
            row["tenant_id"],
            frozenset(row["scopes"]),
            row["rate_limit_per_minute"],
            row["monthly_cap"],
            row["expires_at"],
        )

    def _refuse(self, reason: str) -> Unauthenticated:
        log.info("authentication refused: %s", reason)
        return Unauthenticated(_GENERIC, headers={"WWW-Authenticate": 'Bearer realm="gateway"'})

    def _cached_fresh(self, secret_hash: bytes) -> bool:
        cached = self._cache.get(secret_hash)
        return cached is not None and cached.row is not None and self.clock() - cached.fetched < self.ttl_s

    async def _lookup(self, kind: str, secret_hash: bytes) -> Row | None:
        now = self.clock()
        cached = self._cache.get(secret_hash)
        if cached is not None and now - cached.fetched < self.ttl_s:
            self._cache.move_to_end(secret_hash)
            return cached.row
        async with self.pool.acquire() as conn:
            if kind == "operator":
                row = await q.operator_key_by_hash(conn, secret_hash)
            else:
                row = await q.tenant_key_by_hash(conn, secret_hash)
        self._cache[secret_hash] = _Cached(row, now)
        self._cache.move_to_end(secret_hash)
        while len(self._cache) > self.cache_limit:
            self._cache.popitem(last=False)
        return row

    def invalidate(self) -> None:
        """Forget cached lookups (this replica changed a key; others see it within the TTL)."""
        self._cache.clear()

    async def rate_check(self, principal: Principal) -> tuple[bool, float, int]:
        """(allowed, retry_after_s, remaining) for one request of `principal`, from the key's bucket
        that every process shares: from this process's lease when it holds one, otherwise one
        statement that takes a new lease (two when refused, the second for Retry-After)."""
        now = self.clock()
        lease = self._leases.get(principal.key_id)
        if lease is not None and lease.left > 0 and now < lease.expires:
            lease.left -= 1
            return True, 0.0, lease.shared_remaining + lease.left
        limit = principal.rate_limit_per_minute
        interval = RATE_WINDOW_S / max(1, limit)
        async with self.pool.acquire() as conn:
            taken = await rate_limits.take(
                conn, principal.key_id, interval, RATE_WINDOW_S + _RATE_SLACK_S, at_most=lease_size(limit)
            )
            if taken is None:
                wait = await rate_limits.ahead(conn, principal.key_id) + interval - RATE_WINDOW_S
                return False, max(0.0, wait), 0
        # The whole requests left in the shared bucket; the slack keeps k - 1e-12 from flooring to k - 1.
        shared = max(0, math.floor((RATE_WINDOW_S - taken.ahead_s) / interval + 1e-6))
        if taken.granted > 1:
            self._leases[principal.key_id] = _Lease(taken.granted - 1, shared, now + LEASE_S)
            self._leases.move_to_end(principal.key_id)
            while len(self._leases) > self.cache_limit:
                self._leases.popitem(last=False)
        else:
            self._leases.pop(principal.key_id, None)
        return True, 0.0, shared + taken.granted - 1

    async def flush_last_used(self) -> None:
        """Write `last_used_at` for every key seen since the last flush, in two statements."""
        tenant, operator = list(self._used_tenant), list(self._used_operator)
        self._used_tenant.clear()
        self._used_operator.clear()
        if not tenant and not operator:
            return
        async with self.pool.acquire() as conn:
            await q.touch_keys(conn, tenant, operator)


def presented_key(headers: Any) -> str | None:
    """The key from `Authorization: Bearer <key>` or `X-Api-Key`."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else None
    value = headers.get("x-api-key")
    return value.strip() if value else None
