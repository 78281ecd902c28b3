"""PostgreSQL LISTEN/NOTIFY for one process: one dedicated connection, fanned out in-process.

Why LISTEN/NOTIFY and not polling for job event streams: a stream waits on an in-process event
and re-reads its job's row only when migration 0005's trigger says the row changed, so a thousand
idle SSE clients cost one connection and no queries. Notifications are database-wide, so a stream
on one API replica hears the runner on another. Notifications can be missed while the listening
connection is down; after every (re)connect each subscriber is woken once to re-read, and
subscribers also re-read on their own timers as a safety net.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any
from uuid import UUID

import asyncpg

log = logging.getLogger(__name__)

JOB_EVENTS_CHANNEL = "gateway_job_events"
WEBHOOKS_CHANNEL = "gateway_webhooks"

# Called with the notification's payload, or None after a (re)connect: "you may have missed some".
Callback = Callable[[str | None], None]


class Listener:
    """LISTENs on the channels registered before `start()`, reconnecting when the connection drops."""

    def __init__(self, dsn: str, *, reconnect_s: float = 1.0) -> None:
        self._dsn = dsn
        self._reconnect_s = reconnect_s
        self._callbacks: dict[str, list[Callback]] = {}
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    def listen(self, channel: str, callback: Callback) -> None:
        """Register `callback` for `channel`; call before `start()`."""
        if self._task is not None:
            raise RuntimeError("register channels before the listener starts")
        self._callbacks.setdefault(channel, []).append(callback)

    async def start(self, *, timeout_s: float = 10.0) -> None:
        """Connect and listen; returns once the first connection listens (or raises after `timeout_s`)."""
        self._task = asyncio.create_task(self._supervise(), name="pg-listener")
        waiter = asyncio.create_task(self._connected.wait())
        done, _ = await asyncio.wait({waiter, self._task}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            await self.stop()
            raise TimeoutError("could not LISTEN on the database")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _dispatch(self, _conn: Any, _pid: int, channel: str, payload: object) -> None:
        for callback in self._callbacks.get(channel, []):
            callback(str(payload))

    async def _supervise(self) -> None:
        while True:
            try:
                conn = await asyncpg.connect(self._dsn, server_settings={"application_name": "gateway-listener"})
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("LISTEN connection failed, retrying: %s", exc)
                await asyncio.sleep(self._reconnect_s)
                continue
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _c, lost=lost: lost.set())
            try:
                for channel in self._callbacks:
                    await conn.add_listener(channel, self._dispatch)
                self._connected.set()
                for callbacks in self._callbacks.values():
                    for callback in callbacks:
                        callback(None)
                await lost.wait()
                log.warning("LISTEN connection lost; reconnecting")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("LISTEN connection failed, retrying: %s", exc)
            finally:
                with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    await asyncio.shield(conn.close(timeout=2))
            await asyncio.sleep(self._reconnect_s)


class JobWatchers:
    """In-process subscribers to job changes: each gets an Event set when its job's row changed."""

    def __init__(self) -> None:
        self._events: dict[UUID, set[asyncio.Event]] = {}

    def notify(self, payload: str | None) -> None:
        """Listener callback: wake the watchers of one job, or everyone after a reconnect."""
        if payload is None:
            for events in self._events.values():
                for event in events:
                    event.set()
            return
        try:
            job_id = UUID(payload)
        except ValueError:
            log.warning("ignoring malformed job notification %r", payload)
            return
        for event in self._events.get(job_id, ()):
            event.set()

    @contextlib.contextmanager
    def watch(self, job_id: UUID) -> Iterator[asyncio.Event]:
        """An Event set whenever `job_id` changes, for the duration of the `with` block."""
        event = asyncio.Event()
        self._events.setdefault(job_id, set()).add(event)
        try:
            yield event
        finally:
            events = self._events.get(job_id)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._events[job_id]

    def __len__(self) -> int:
        return sum(len(events) for events in self._events.values())
