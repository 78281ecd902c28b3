"""SQL for Idempotency-Keys: one row per (tenant, key) with the request's hash and, once admitted,
its job. A key older than the TTL counts as unused: a claim takes it over."""

from __future__ import annotations

from uuid import UUID

import msgspec

from gateway.db import Conn, require_tenant


class IdempotencyRecord(msgspec.Struct, frozen=True):
    """What an earlier request with the key left: its body's hash, and its job once admitted."""

    request_hash: bytes
    job_id: UUID | None


async def find(conn: Conn, tenant_id: UUID, key: str, ttl_s: float) -> IdempotencyRecord | None:
    """The key's record while it is younger than `ttl_s`."""
    row = await conn.fetchrow(
        """SELECT request_hash, job_id FROM idempotency_keys
           WHERE tenant_id = $1 AND key = $2 AND created_at > now() - make_interval(secs => $3)""",
        require_tenant(tenant_id),
        key,
        ttl_s,
    )
    return None if row is None else IdempotencyRecord(row["request_hash"], row["job_id"])


async def claim(conn: Conn, tenant_id: UUID, key: str, request_hash: bytes, ttl_s: float) -> bool:
    """Take the key for a new request (a new key, or one past its TTL); False when another
    request holds it."""
    claimed: bool | None = await conn.fetchval(
        """INSERT INTO idempotency_keys (tenant_id, key, request_hash, job_id) VALUES ($1, $2, $3, NULL)
           ON CONFLICT (tenant_id, key) DO UPDATE SET request_hash = EXCLUDED.request_hash,
               created_at = now(), job_id = NULL
           WHERE idempotency_keys.created_at <= now() - make_interval(secs => $4)
           RETURNING true""",
        require_tenant(tenant_id),
        key,
        request_hash,
        ttl_s,
    )
    return bool(claimed)


async def attach(conn: Conn, tenant_id: UUID, key: str, job_id: UUID) -> None:
    """Record the job the key's request was admitted as: later requests replay it."""
    await conn.execute(
        "UPDATE idempotency_keys SET job_id = $3 WHERE tenant_id = $1 AND key = $2",
        require_tenant(tenant_id),
        key,
        job_id,
    )


async def release(conn: Conn, tenant_id: UUID, key: str, *, job_id: UUID | None = None) -> None:
    """Free a key whose request was not admitted (or, with `job_id`, whose job is being failed), so
    that a retry goes through instead of meeting "still being processed"."""
    await conn.execute(
        """DELETE FROM idempotency_keys
           WHERE tenant_id = $1 AND key = $2 AND (job_id IS NULL OR job_id = $3)""",
        require_tenant(tenant_id),
        key,
        job_id,
    )
