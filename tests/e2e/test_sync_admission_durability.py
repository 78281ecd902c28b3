"""A sync request's admission commits without waiting for its WAL flush; everything a client can see
afterwards is behind a commit that waits (gateway/db/generations.py explains why that is safe)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from uuid import UUID, uuid4

import asyncpg
import pytest

from gateway.db import Conn
from gateway.db import generations as gq
from gateway.db.pool import create_pool
from tests.conftest import Gateway
from tests.e2e.test_generation_billing import T2I, audit_clean, auth
from tests.waiting import eventually


async def _wal_fsyncs(observer: asyncpg.Connection, pid: int) -> int:
    """WAL fsyncs that backend `pid` did itself (a commit that waits for its flush does one)."""
    return int(
        await observer.fetchval(
            "SELECT coalesce(sum(fsyncs), 0) FROM pg_stat_get_backend_io($1) WHERE object = 'wal'", pid
        )
    )


async def _admit(conn: Conn, tenant_id: UUID, lease_owner: str | None) -> asyncpg.Record:
    row = await gq.admit_job(
        conn, _args(tenant_id, lease_owner, await conn.fetchval("SELECT max(id) FROM price_versions"))
    )
    # Make the backend publish its I/O counters now (they are batched for a second otherwise).
    await conn.execute("SELECT pg_stat_force_next_flush()")
    return row


def _args(tenant_id: UUID, lease_owner: str | None, version: int) -> gq.AdmitArgs:
    return gq.AdmitArgs(
        job_id=uuid4(),
        tenant_id=tenant_id,
        key_id=None,
        operation="text-to-image",
        params={"prompt": "p"},
        n=1,
        unit_price=400,
        price_version_id=version,
        amount=400,
        allowed_engines=None,
        password_hash=None,
        webhook_url=None,
        deadline_s=600,
        lease_owner=lease_owner,
        lease_s=30,
        inputs=[],
    )


async def test_only_a_sync_admission_commits_without_waiting_for_the_wal_flush(
    gateway: Gateway, database_url: str
) -> None:
    tenant_id, _ = await gateway.tenant(credits=10)
    pool = await create_pool(database_url, min_size=1, max_size=1, statement_cache_size=100)
    observer = await asyncpg.connect(database_url)
    try:
        async with pool.acquire() as conn:
            if conn.get_server_version().major < 18:  # GATEWAY_TEST_DATABASE_URL may name an older one
                pytest.skip("per-backend I/O statistics (pg_stat_get_backend_io) need PostgreSQL 18")
            pid = conn.get_server_pid()
            before = await _wal_fsyncs(observer, pid)
            sync = await _admit(conn, tenant_id, lease_owner="probe")
            assert sync["id"] is not None
            assert sync["synchronous_commit"] == "off"
            assert await _wal_fsyncs(observer, pid) == before
            # Only that transaction: the session keeps its setting for what follows.
            assert await conn.fetchval("SHOW synchronous_commit") == "on"

            queued = await _admit(conn, tenant_id, lease_owner=None)
            assert queued["id"] is not None
            assert queued["synchronous_commit"] == "on"
            assert await _wal_fsyncs(observer, pid) > before
    finally:
        await pool.close()
        await observer.close()


async def test_a_sync_request_answered_202_made_its_job_durable_first(
    make_gateway: Callable[..., Awaitable[Gateway]],
) -> None:
    # The lease keeper renews every 0.5 s; the wait ends well before that, so only the handler's own
    # durable write (a lease renewal, whose commit waits for the flush) can move the lease on.
    gateway = await make_gateway(sync_wait_s=0.1)
    tenant_id, key = await gateway.tenant(credits=10)
    gateway.extra["a2c"].slow_job(polls=40)
    response = await gateway.client.post("/v1/text-to-image", json=T2I, headers=auth(key))
    assert response.status_code == 202, response.text
    async with gateway.pool.acquire() as conn:
        renewed_after = await conn.fetchval(
            "SELECT extract(epoch FROM lease_expires_at - started_at) FROM jobs WHERE tenant_id = $1", tenant_id
        )
        assert renewed_after >= 5 + 0.1  # lease_s of the test settings, renewed after the wait

        async def succeeded() -> bool:
            return bool(await conn.fetchval("SELECT state FROM jobs WHERE tenant_id = $1", tenant_id) == "succeeded")

        await eventually(succeeded, what="the job succeeded")
    await audit_clean(gateway)
