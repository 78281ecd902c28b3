"""Failing a job whose request was answered with a database outage, once the database is back."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from uuid import UUID

from gateway.backoff import exponential_step
from gateway.db import Conn
from gateway.db import jobs as jq
from gateway.db.pool import Pool
from gateway.db.types import DATABASE_ERRORS, Row

log = logging.getLogger(__name__)

# The pause between tries doubles from the first to the max.
_FIRST_DELAY_S = 0.05
_MAX_DELAY_S = 1.0


Cleanup = Callable[[Conn], Awaitable[None]]


async def fail_when_reachable(
    pool: Pool,
    job_id: UUID,
    settle: Callable[[Row], Awaitable[None]],
    stopping: asyncio.Event,
    cleanup: Cleanup | None = None,
) -> None:
    """Retry, with a growing pause, until `cleanup` has run and the job is read and `settle`d (or
    found finished, or absent: the outage lost its admission) or the runner stops; an expired lease
    then lets another runner take the job, which is the most a stopping process can do."""
    tries = itertools.count()
    while not stopping.is_set():
        try:
            async with pool.acquire() as conn:
                if cleanup is not None:
                    await cleanup(conn)
                    cleanup = None
                job = await jq.get_job_of_any_tenant(conn, job_id)
            if job is None or job["state"] not in ("queued", "running"):
                return
            await settle(job)
            return
        except DATABASE_ERRORS as exc:
            log.info("failing job %s after the database outage: not yet (%s)", job_id, type(exc).__name__)
        with contextlib.suppress(TimeoutError):
            delay = exponential_step(_FIRST_DELAY_S, 2.0, next(tries), _MAX_DELAY_S)
            await asyncio.wait_for(stopping.wait(), timeout=delay)
