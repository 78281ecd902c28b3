"""Shutdown of background work that holds leases: let it finish for a while, then cancel the rest."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable


async def drain(tasks: Iterable[asyncio.Task[None]], timeout_s: float) -> None:
    """Wait up to `timeout_s` for `tasks`, then cancel what is left. Cancelled work is safe to
    drop: its lease expires and another process takes it over (jobs) or retries it (webhooks)."""
    pending = set(tasks)
    if not pending:
        return
    _, pending = await asyncio.wait(pending, timeout=timeout_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
