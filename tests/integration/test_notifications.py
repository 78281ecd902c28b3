"""LISTEN/NOTIFY plumbing against a real PostgreSQL: the job triggers and the reconnecting listener."""

from __future__ import annotations

from uuid import uuid4

import asyncpg

from gateway.db.notifications import JOB_EVENTS_CHANNEL, WEBHOOKS_CHANNEL, JobWatchers, Listener
from tests.waiting import eventually

_MARK = "test-mark-"


async def heard_up_to_a_mark(conn: asyncpg.Connection, channel: str, heard: list[str | None]) -> list[str | None]:
    """What was heard on `channel` before a marker notification sent now (earlier markers left out),
    once the marker is heard.

    PostgreSQL delivers notifications in the order their transactions committed, so everything
    committed before the marker has arrived once it has: no guessing how long to wait for strays."""
    mark = f"{_MARK}{uuid4()}"
    await conn.execute("SELECT pg_notify($1, $2)", channel, mark)
    await eventually(lambda: mark in heard, what="the marker notification")
    return [h for h in heard[: heard.index(mark)] if not (h or "").startswith(_MARK)]


async def test_job_rows_notify_on_state_and_progress_changes_but_not_on_lease_renewals(database_url: str) -> None:
    heard: list[str | None] = []
    listener = Listener(database_url)
    listener.listen(JOB_EVENTS_CHANNEL, heard.append)
    await listener.start()
    conn = await asyncpg.connect(database_url)
    try:
        tenant, job = uuid4(), uuid4()
        await conn.execute("INSERT INTO tenants (id, name, webhook_secret) VALUES ($1, 't', 'whsec_dGVzdA==')", tenant)
        await conn.execute(
            """INSERT INTO jobs (id, tenant_id, operation, params, n, unit_price, price_version_id, deadline_at)
               VALUES ($1, $2, 'text-to-image', '{}', 1, 400, 1, now() + interval '1 hour')""",
            job,
            tenant,
        )
        await conn.execute("UPDATE jobs SET lease_expires_at = now() WHERE id = $1", job)
        await conn.execute("UPDATE jobs SET progress = 0 WHERE id = $1", job)  # no change: no event
        await conn.execute("UPDATE jobs SET state = 'running' WHERE id = $1", job)
        await conn.execute("UPDATE jobs SET progress = 0.5 WHERE id = $1", job)
        assert await heard_up_to_a_mark(conn, JOB_EVENTS_CHANNEL, heard) == [None, str(job), str(job)]
    finally:
        await conn.close()
        await listener.stop()


async def test_outbox_inserts_wake_dispatchers_once_per_transaction_and_empty_inserts_not_at_all(
    database_url: str,
) -> None:
    heard: list[str | None] = []
    listening = await asyncpg.connect(database_url)
    await listening.add_listener(WEBHOOKS_CHANNEL, lambda *args: heard.append(args[3]))
    conn = await asyncpg.connect(database_url)

    async def heard_after_commit() -> list[str | None]:
        return await heard_up_to_a_mark(conn, WEBHOOKS_CHANNEL, heard)

    insert = """INSERT INTO webhook_outbox (tenant_id, message_id, url, event_type, payload)
                SELECT $1, m, 'https://hooks.test/', 'job.succeeded', '{}' FROM unnest($2::text[]) AS m"""
    try:
        tenant = uuid4()
        await conn.execute("INSERT INTO tenants (id, name, webhook_secret) VALUES ($1, 't', 'whsec_dGVzdA==')", tenant)
        # Settlement's outbox INSERT ... SELECT for a job without a webhook URL inserts nothing.
        await conn.execute(insert, tenant, [])
        assert await heard_after_commit() == []
        async with conn.transaction():
            await conn.execute(insert, tenant, [f"msg-{uuid4()}", f"msg-{uuid4()}"])
            await conn.execute(insert, tenant, [f"msg-{uuid4()}"])
        assert await heard_after_commit() == [""]
    finally:
        await conn.close()
        await listening.close()


async def test_the_listener_reconnects_and_wakes_everyone_after_losing_its_connection(database_url: str) -> None:
    watchers = JobWatchers()
    woken: list[str | None] = []
    listener = Listener(database_url, reconnect_s=0.05)
    listener.listen(JOB_EVENTS_CHANNEL, watchers.notify)
    listener.listen(WEBHOOKS_CHANNEL, woken.append)
    await listener.start()
    conn = await asyncpg.connect(database_url)
    job = uuid4()
    try:
        with watchers.watch(job) as changed:
            assert len(watchers) == 1
            changed.clear()
            killed = await conn.fetchval(
                """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                   WHERE application_name = 'gateway-listener' AND datname = current_database()"""
            )
            assert killed == 1
            await eventually(changed.is_set)  # woken to re-read: changes while disconnected went unheard
            await eventually(lambda: woken.count(None) == 2)
            changed.clear()
            await conn.execute("SELECT pg_notify($1, $2)", JOB_EVENTS_CHANNEL, str(job))
            await eventually(changed.is_set)
        assert len(watchers) == 0
    finally:
        await conn.close()
        await listener.stop()
