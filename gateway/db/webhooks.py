"""SQL for the webhook outbox and each tenant's webhook settings."""

from __future__ import annotations

from uuid import UUID

import asyncpg

from gateway.db import Conn, require_tenant


async def claim_due(conn: Conn, *, limit: int, lease_s: float) -> list[asyncpg.Record]:
    """Take up to `limit` due messages. Claiming counts the attempt and pushes `next_attempt_at`
    past the attempt's time limit, which works as a lease: a dispatcher that dies mid-POST leaves
    the message to be retried by any replica once the lease runs out. The new `attempts` value
    is the claim's fencing token (see `mark_delivered` / `mark_failed`)."""
    return await conn.fetch(
        """UPDATE webhook_outbox o
           SET attempts = o.attempts + 1, next_attempt_at = now() + make_interval(secs => $2)
           FROM tenants t
           WHERE t.id = o.tenant_id AND o.id IN (
               SELECT id FROM webhook_outbox
               WHERE delivered_at IS NULL AND failed_at IS NULL AND next_attempt_at <= now()
               ORDER BY next_attempt_at
               LIMIT $1
               FOR UPDATE SKIP LOCKED)
           RETURNING o.id, o.tenant_id, o.message_id, o.url, o.event_type, o.payload, o.attempts, o.created_at,
                     o.request_id, t.webhook_secret""",
        limit,
        lease_s,
    )


async def seconds_until_next_due(conn: Conn) -> float | None:
    """How long until the earliest undelivered message is due (<= 0: now); None when there is none."""
    value = await conn.fetchval(
        """SELECT extract(epoch FROM min(next_attempt_at) - now())::float8 FROM webhook_outbox
           WHERE delivered_at IS NULL AND failed_at IS NULL"""
    )
    return None if value is None else float(value)


async def mark_delivered(conn: Conn, message_id: int, attempt: int) -> bool:
    """Record the acknowledgement; False when the claim was no longer ours (nothing changes)."""
    row = await conn.fetchval(
        """UPDATE webhook_outbox SET delivered_at = now(), last_error = NULL, last_error_detail = NULL
           WHERE id = $1 AND attempts = $2 AND delivered_at IS NULL AND failed_at IS NULL RETURNING true""",
        message_id,
        attempt,
    )
    return bool(row)


async def mark_failed(
    conn: Conn, message_id: int, attempt: int, *, error: str, detail: str, retry_in_s: float | None
) -> None:
    """A failed attempt: retry after `retry_in_s`, or give up (dead) when it is None. `error` is the
    generic reason a tenant may see; `detail` (the exception's text) is for operators only."""
    await conn.execute(
        """UPDATE webhook_outbox
           SET last_error = $3, last_error_detail = $5,
               next_attempt_at = CASE WHEN $4::float8 IS NULL THEN next_attempt_at
                                      ELSE now() + make_interval(secs => $4::float8) END,
               failed_at = CASE WHEN $4::float8 IS NULL THEN now() END
           WHERE id = $1 AND attempts = $2 AND delivered_at IS NULL AND failed_at IS NULL""",
        message_id,
        attempt,
        error[:1000],
        retry_in_s,
        detail[:1000],
    )


async def tenant_webhook(conn: Conn, tenant_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT webhook_url, webhook_secret FROM tenants WHERE id = $1", tenant_id)


async def set_tenant_webhook_url(conn: Conn, tenant_id: UUID, url: str | None) -> None:
    await conn.execute(
        "UPDATE tenants SET webhook_url = $2, updated_at = now() WHERE id = $1",
        tenant_id,
        url,
    )


async def set_tenant_webhook_secret(conn: Conn, tenant_id: UUID, secret: str) -> None:
    await conn.execute(
        "UPDATE tenants SET webhook_secret = $2, updated_at = now() WHERE id = $1",
        tenant_id,
        secret,
    )


async def messages_for(conn: Conn, tenant_id: UUID) -> list[asyncpg.Record]:
    """A tenant's outbox messages, oldest first (what was sent, and how it went). Only the generic
    `last_error`: the operator-only `last_error_detail` is never selected for a tenant."""
    return await conn.fetch(
        """SELECT message_id, url, event_type, attempts, next_attempt_at, delivered_at, failed_at, last_error,
                  created_at
           FROM webhook_outbox WHERE tenant_id = $1 ORDER BY id""",
        require_tenant(tenant_id),
    )
