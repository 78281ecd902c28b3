"""SQL for tenants, API keys and operator keys."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from gateway.db import Conn, require_tenant

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
    """The key, its secret's retirement and its tenant's status, for authentication."""
    return await conn.fetchrow(TENANT_KEY_BY_HASH, secret_hash)


async def operator_key_by_hash(conn: Conn, secret_hash: bytes) -> asyncpg.Record | None:
    """The operator key with this secret, for authentication."""
    return await conn.fetchrow(OPERATOR_KEY_BY_HASH, secret_hash)


async def touch_keys(conn: Conn, tenant_key_ids: list[UUID], operator_key_ids: list[UUID]) -> None:
    """Record last use in one statement per table, for every key seen since the last flush."""
    if tenant_key_ids:
        await conn.execute("UPDATE api_keys SET last_used_at = now() WHERE id = ANY($1::uuid[])", tenant_key_ids)
    if operator_key_ids:
        await conn.execute("UPDATE operator_keys SET last_used_at = now() WHERE id = ANY($1::uuid[])", operator_key_ids)


async def insert_tenant(conn: Conn, tenant_id: UUID, name: str, webhook_secret: str, max_concurrent_jobs: int) -> None:
    """A tenant and its empty wallet."""
    await conn.execute(
        "INSERT INTO tenants (id, name, webhook_secret, max_concurrent_jobs) VALUES ($1, $2, $3, $4)",
        tenant_id,
        name,
        webhook_secret,
        max_concurrent_jobs,
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
    """A key and its first secret (stored as a hash only)."""
    await conn.execute(
        """INSERT INTO api_keys (id, tenant_id, name, scopes, expires_at, rate_limit_per_minute, monthly_cap,
                                 created_by_key_id)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
        key_id,
        tenant_id,
        name,
        scopes,
        expires_at,
        rate_limit_per_minute,
        monthly_cap,
        created_by_key_id,
    )
    await conn.execute(
        "INSERT INTO api_key_secrets (secret_hash, key_id, hint) VALUES ($1, $2, $3)", secret_hash, key_id, hint
    )


async def insert_operator_key(conn: Conn, *, key_id: UUID, name: str, secret_hash: bytes, hint: str) -> None:
    """An operator key (stored as a hash only)."""
    await conn.execute(
        "INSERT INTO operator_keys (id, name, secret_hash, hint) VALUES ($1, $2, $3, $4)",
        key_id,
        name,
        secret_hash,
        hint,
    )


async def list_operator_keys(conn: Conn) -> list[asyncpg.Record]:
    """Every operator key, oldest first, without its hash."""
    return await conn.fetch(
        """SELECT id, name, hint, created_at, revoked_at, last_used_at FROM operator_keys
           ORDER BY created_at, id"""
    )


async def revoke_operator_key(conn: Conn, key_id: UUID) -> asyncpg.Record | None:
    """Revoke the key unless it is the last active one (an operator must never lock everyone out).
    Returns the key row (unchanged when already revoked), or None when there is no such key; raises
    nothing itself: the caller reads `refused` to tell the last-key case."""
    # Serialize revocations so two operators can't each revoke "the other" last key at once.
    await conn.execute("LOCK TABLE operator_keys IN SHARE ROW EXCLUSIVE MODE")
    return await conn.fetchrow(
        """WITH target AS (SELECT * FROM operator_keys WHERE id = $1),
                others AS (SELECT count(*) AS n FROM operator_keys WHERE revoked_at IS NULL AND id <> $1),
                revoked AS (
                    UPDATE operator_keys k SET revoked_at = now()
                    FROM target, others
                    WHERE k.id = target.id AND target.revoked_at IS NULL AND others.n > 0
                    RETURNING k.*)
           SELECT coalesce(r.id, t.id) AS id, coalesce(r.name, t.name) AS name, coalesce(r.hint, t.hint) AS hint,
                  t.created_at, coalesce(r.revoked_at, t.revoked_at) AS revoked_at, t.last_used_at,
                  (t.revoked_at IS NULL AND r.id IS NULL) AS refused
           FROM target t LEFT JOIN revoked r ON r.id = t.id""",
        key_id,
    )


# --- Tenants -------------------------------------------------------------------------------------

_TENANT_COLUMNS = """t.id, t.name, t.status, t.max_concurrent_jobs, t.created_at, t.updated_at,
       w.balance, w.held"""


async def any_tenant_exists(conn: Conn) -> bool:
    """Whether the database holds at least one tenant (first start creates the demo tenant)."""
    exists: bool = await conn.fetchval("SELECT EXISTS (SELECT 1 FROM tenants)")
    return exists


async def lock_first_start(conn: Conn) -> None:
    """Serialize first-start work across replicas until the transaction ends."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('gateway.first_start'))")


async def get_tenant(conn: Conn, tenant_id: UUID) -> asyncpg.Record | None:
    """One tenant with its wallet."""
    return await conn.fetchrow(
        f"SELECT {_TENANT_COLUMNS} FROM tenants t JOIN wallets w ON w.tenant_id = t.id WHERE t.id = $1",  # noqa: S608 - constant
        tenant_id,
    )


async def list_tenants(conn: Conn, *, before: tuple[datetime, UUID] | None, limit: int) -> list[asyncpg.Record]:
    """Newest first; `before` is the (created_at, id) of the last row of the previous page."""
    return await conn.fetch(
        f"""SELECT {_TENANT_COLUMNS} FROM tenants t JOIN wallets w ON w.tenant_id = t.id
            WHERE $1::timestamptz IS NULL OR (t.created_at, t.id) < ($1, $2)
            ORDER BY t.created_at DESC, t.id DESC LIMIT $3""",  # noqa: S608 - constant
        before[0] if before else None,
        before[1] if before else None,
        limit,
    )


async def set_tenant_status(conn: Conn, tenant_id: UUID, status: str) -> bool:
    """Suspend or resume; False when there is no such tenant."""
    row = await conn.fetchrow(
        "UPDATE tenants SET status = $2, updated_at = now() WHERE id = $1 RETURNING id", tenant_id, status
    )
    return row is not None


async def last_ledger_entry(conn: Conn, tenant_id: UUID) -> asyncpg.Record:
    """The tenant's newest ledger entry. Read right after `billing.credit` in the same transaction, whose
    wallet row lock keeps any other entry for this tenant from landing in between."""
    row: asyncpg.Record | None = await conn.fetchrow(
        """SELECT id, tenant_id, kind, amount, balance_after, operator_key_id, reason, created_at
           FROM ledger_entries WHERE tenant_id = $1 ORDER BY id DESC LIMIT 1""",
        tenant_id,
    )
    assert row is not None, "called after an entry was written"
    return row


# --- Tenant keys ---------------------------------------------------------------------------------

# The hint shown is that of the newest secret, the one a rotation just handed out.
_KEY_COLUMNS = """k.id, k.tenant_id, k.name, k.scopes, k.expires_at, k.revoked_at, k.rate_limit_per_minute,
       k.monthly_cap, k.created_at, k.last_used_at,
       (SELECT s.hint FROM api_key_secrets s WHERE s.key_id = k.id ORDER BY s.created_at DESC LIMIT 1) AS hint"""


async def list_tenant_keys(conn: Conn, tenant_id: UUID) -> list[asyncpg.Record]:
    """Every key of the tenant, revoked ones included, oldest first (uses api_keys_tenant)."""
    return await conn.fetch(
        f"SELECT {_KEY_COLUMNS} FROM api_keys k WHERE k.tenant_id = $1 ORDER BY k.created_at, k.id",  # noqa: S608 - constant
        require_tenant(tenant_id),
    )


async def get_tenant_key(conn: Conn, key_id: UUID, tenant_id: UUID, *, lock: bool = False) -> asyncpg.Record | None:
    """The key if it belongs to `tenant_id`, else None: another tenant's key is indistinguishable from
    a missing one. `lock` holds the key row until the transaction ends (one rotation at a time)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        f"""SELECT {_KEY_COLUMNS} FROM api_keys k WHERE k.id = $1 AND k.tenant_id = $2
            {"FOR UPDATE OF k" if lock else ""}""",  # noqa: S608 - constant
        key_id,
        require_tenant(tenant_id),
    )
    return row


async def retire_secrets(conn: Conn, key_id: UUID, grace_period_s: int) -> None:
    """Let every live secret of the key work for `grace_period_s` more seconds at most.

    A secret already due to retire sooner keeps its earlier end: rotating twice never extends an old secret."""
    await conn.execute(
        """UPDATE api_key_secrets
           SET retires_at = least(coalesce(retires_at, 'infinity'), now() + make_interval(secs => $2))
           WHERE key_id = $1 AND (retires_at IS NULL OR retires_at > now())""",
        key_id,
        float(grace_period_s),
    )


async def insert_secret(conn: Conn, *, key_id: UUID, secret_hash: bytes, hint: str) -> None:
    """A new secret for an existing key."""
    await conn.execute(
        "INSERT INTO api_key_secrets (secret_hash, key_id, hint) VALUES ($1, $2, $3)", secret_hash, key_id, hint
    )


async def revoke_tenant_key(conn: Conn, key_id: UUID, tenant_id: UUID) -> bool:
    """Revoke the tenant's key; revoking twice keeps the first time. False when it is not the tenant's."""
    row = await conn.fetchrow(
        """UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
           WHERE id = $1 AND tenant_id = $2 RETURNING id""",
        key_id,
        require_tenant(tenant_id),
    )
    return row is not None
