"""SQL for the dashboard: sign-in sessions and the files it shows as thumbnails.

Balances, usage, jobs, keys and prices come from the same queries the API uses (billing, jobs, keys).
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import asyncpg

from gateway.db import Conn


async def insert_session(
    conn: Conn,
    *,
    token_hash: bytes,
    kind: str,
    key_id: UUID,
    secret_hash: bytes,
    csrf_token: str,
    ttl_s: int,
) -> datetime:
    """A session for a key that just authenticated; returns when it expires."""
    expires_at: datetime = await conn.fetchval(
        """INSERT INTO dashboard_sessions (token_hash, kind, api_key_id, operator_key_id, secret_hash, csrf_token,
                                           expires_at)
           VALUES ($1, $2, CASE WHEN $2 = 'tenant' THEN $3::uuid END, CASE WHEN $2 = 'operator' THEN $3::uuid END,
                   $4, $5, now() + make_interval(secs => $6))
           RETURNING expires_at""",
        token_hash,
        kind,
        key_id,
        secret_hash,
        csrf_token,
        float(ttl_s),
    )
    return expires_at


async def live_session(conn: Conn, token_hash: bytes) -> asyncpg.Record | None:
    """The session with this token if it has not expired."""
    return await conn.fetchrow(
        """SELECT kind, coalesce(api_key_id, operator_key_id) AS key_id, secret_hash, csrf_token, expires_at
           FROM dashboard_sessions WHERE token_hash = $1 AND expires_at > now()""",
        token_hash,
    )


async def delete_session(conn: Conn, token_hash: bytes) -> None:
    await conn.execute("DELETE FROM dashboard_sessions WHERE token_hash = $1", token_hash)


async def delete_key_sessions(conn: Conn, api_key_id: UUID) -> int:
    """End every session signed in with this tenant key; returns how many there were."""
    status: str = await conn.execute("DELETE FROM dashboard_sessions WHERE api_key_id = $1", api_key_id)
    return int(status.rsplit(maxsplit=1)[-1])


async def delete_expired_sessions(conn: Conn) -> None:
    """Sweep sessions past their end (uses dashboard_sessions_expiry); run at each sign-in."""
    await conn.execute("DELETE FROM dashboard_sessions WHERE expires_at <= now()")


async def thumbnail_source(conn: Conn, file_id: str, tenant_id: UUID) -> asyncpg.Record | None:
    """The blob of one of the tenant's unexpired output images, or None: another tenant's file, a
    password-protected one and a missing one look the same."""
    return await conn.fetchrow(
        """SELECT f.blob_key, f.etag FROM files f JOIN jobs j ON j.id = f.job_id
           WHERE f.id = $1 AND f.tenant_id = $2 AND f.kind = 'image' AND f.expires_at > now()
             AND j.download_password_hash IS NULL""",
        file_id,
        tenant_id,
    )


async def results_of_jobs(conn: Conn, job_ids: list[UUID]) -> list[asyncpg.Record]:
    """Per-image results of several jobs at once (for the recent-jobs list)."""
    return await conn.fetch(
        """SELECT job_id, index, status, file_id FROM job_results
           WHERE job_id = ANY($1::uuid[]) ORDER BY job_id, index""",
        job_ids,
    )
