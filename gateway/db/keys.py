"""SQL for tenants, API keys and operator keys."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

Conn = asyncpg.Connection[Any] | asyncpg.pool.PoolConnectionProxy[Any]

TENANT_KEY_BY_HASH = """
SELECT k.id, k.tenant_id, k.scopes, k.expires_at, k.revoked_at, k.rate_limit_per_minute, k.monthly_cap,
       s.secret_hash, s.retires_at, t.status AS tenant_status
FROM api_key_secrets s
JOIN api_keys k ON k.id = s.key_id
JOIN tenants t ON t.id = k.tenant_id
WHERE s.secret_hash = $1
"""

OPERATOR_KEY_BY_HASH = """
SELECT id, secret_hash, revoked_at FROM operator_keys WHERE secret_hash = $1
"""


async def tenant_key_by_hash(conn: Conn, secret_hash: bytes) -> asyncpg.Record | None:
    return await conn.fetchrow(TENANT_KEY_BY_HASH, secret_hash)


async def operator_key_by_hash(conn: Conn, secret_hash: bytes) -> asyncpg.Record | None:
    return await conn.fetchrow(OPERATOR_KEY_BY_HASH, secret_hash)


async def touch_keys(conn: Conn, tenant_key_ids: list[UUID], operator_key_ids: list[UUID]) -> None:
    """Record last use in one statement per table, for every key seen since the last flush."""
    if tenant_key_ids:
        await conn.execute("UPDATE api_keys SET last_used_at = now() WHERE id = ANY($1::uuid[])", tenant_key_ids)
    if operator_key_ids:
        await conn.execute("UPDATE operator_keys SET last_used_at = now() WHERE id = ANY($1::uuid[])", operator_key_ids)


async def insert_tenant(conn: Conn, tenant_id: UUID, name: str, webhook_secret: str, max_concurrent_jobs: int) -> None:
    await conn.execute(
        "INSERT INTO tenants (id, name, webhook_secret, max_concurrent_jobs) VALUES ($1, $2, $3, $4)",
        tenant_id, name, webhook_secret, max_concurrent_jobs,
    )
    await conn.execute("INSERT INTO wallets (tenant_id) VALUES ($1)", tenant_id)


async def insert_tenant_key(
    conn: Conn,
    *,
    key_id: UUID,
    tenant_id: UUID,
    name: str,
    scopes: list[str],
    secret_hash: bytes,
    hint: str,
    expires_at: Any = None,
    rate_limit_per_minute: int = 600,
    monthly_cap: int | None = None,
    created_by_key_id: UUID | None = None,
) -> None:
    await conn.execute(
        """INSERT INTO api_keys (id, tenant_id, name, scopes, expires_at, rate_limit_per_minute, monthly_cap,
                                 created_by_key_id)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
        key_id, tenant_id, name, scopes, expires_at, rate_limit_per_minute, monthly_cap, created_by_key_id,
    )
    await conn.execute(
        "INSERT INTO api_key_secrets (secret_hash, key_id, hint) VALUES ($1, $2, $3)", secret_hash, key_id, hint
    )


async def insert_operator_key(conn: Conn, *, key_id: UUID, name: str, secret_hash: bytes, hint: str) -> None:
    await conn.execute(
        "INSERT INTO operator_keys (id, name, secret_hash, hint) VALUES ($1, $2, $3, $4)",
        key_id, name, secret_hash, hint,
    )
