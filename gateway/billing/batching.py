"""Settlements of one tenant that wait for its wallet gate together are settled in one statement.

The wallet gate (gate.py) lets one wallet statement per tenant at a time through. A tenant with many
requests in flight queues there, and each settlement used to run alone: its own executor start-up,
commit and WAL flush, with the gate held all the while. Now whoever gets the gate takes every
settlement of that tenant waiting by then (up to `max_batch`, distinct jobs) and runs them as one
statement (`SETTLE_MANY`, gateway/db/settlements.py); the others find their result ready when their
turn comes. Alone, a settlement runs the one-job statement as before, so a tenant with one request
in flight sees no change.

A batch is all or nothing in PostgreSQL. When the server refuses it (a constraint, say), it was
rolled back whole, so each of its settlements runs again alone and a problem stays with its own job.
Any other failure (the connection lost) leaves the outcome unknown: it is reported to every
settlement of the batch, as it would have been to one settlement alone, and nothing is run twice
(running a committed settlement again would find the reservation closed, and the runner would throw
its images away). A batch runs in a task of its own, so cancelling the request that started it does
not leave the rest waiting.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from uuid import UUID

import asyncpg

from gateway.billing.gate import WalletGate
from gateway.db import settlements as sq
from gateway.db.pool import Pool


@dataclass(eq=False)
class _Waiting:
    args: sq.SettleArgs
    result: asyncio.Future[asyncpg.Record]
    taken: bool = False


@dataclass
class SettlementBatcher:
    """Per-process; shares the runner's wallet gate with admission."""

    pool: Pool
    gate: WalletGate
    max_batch: int = 32
    _waiting: dict[UUID, list[_Waiting]] = field(default_factory=dict, init=False)
    _batches: set[asyncio.Task[None]] = field(default_factory=set, init=False)

    async def settle(self, tenant_id: UUID, args: sq.SettleArgs) -> asyncpg.Record:
        """The settlement statement's row for `args`, run alone or with others of the tenant."""
        me = _Waiting(args, asyncio.get_running_loop().create_future())
        # Nobody may be left to read a failure (its caller was cancelled): mark it read.
        me.result.add_done_callback(lambda f: f.cancelled() or f.exception())
        waiting = self._waiting.setdefault(tenant_id, [])
        waiting.append(me)
        try:
            async with self.gate.hold(tenant_id):
                if not me.taken:
                    batch = self._take(waiting, me)
                    task = asyncio.create_task(self._run(batch), name=f"settle-{len(batch)}")
                    self._batches.add(task)
                    task.add_done_callback(self._batches.discard)
                    await asyncio.shield(task)
        finally:
            if not me.taken:  # cancelled while waiting for the gate
                waiting.remove(me)
            if not waiting and self._waiting.get(tenant_id) is waiting:
                del self._waiting[tenant_id]
        # Ready by now, unless the task that took it was cancelled while its batch still runs.
        return await me.result

    def __len__(self) -> int:
        """Settlements waiting for their tenant's gate (for tests and debugging)."""
        return sum(len(waiting) for waiting in self._waiting.values())

    def _take(self, waiting: list[_Waiting], me: _Waiting) -> list[_Waiting]:
        """`me` and the tenant's other waiting settlements, oldest first, one per job; they leave `waiting`."""
        batch = [me]
        jobs = {me.args.job_id}
        for other in waiting:
            if len(batch) >= self.max_batch:
                break
            if other is me or other.args.job_id in jobs or other.args.file_ttl_s != me.args.file_ttl_s:
                continue
            batch.append(other)
            jobs.add(other.args.job_id)
        for taken in batch:
            taken.taken = True
        waiting[:] = [w for w in waiting if not w.taken]
        return batch

    async def _run(self, batch: list[_Waiting]) -> None:
        try:
            await self._settle(batch)
        finally:  # the loop is shutting down: nobody is left hanging
            for w in batch:
                if not w.result.done():
                    w.result.cancel()

    async def _settle(self, batch: list[_Waiting]) -> None:
        try:
            rows = await self._statement([w.args for w in batch])
        except asyncpg.PostgresError as exc:
            if len(batch) == 1:
                batch[0].result.set_exception(exc)
                return
            for w in batch:  # rolled back whole: each alone, so one job's problem stays its own
                try:
                    (row,) = await self._statement([w.args])
                except Exception as alone:  # handed to that settlement's caller
                    w.result.set_exception(alone)
                else:
                    w.result.set_result(row)
        except Exception as exc:  # outcome unknown: report it to everyone, run nothing again
            for w in batch:
                w.result.set_exception(exc)
        else:
            for w, row in zip(batch, rows, strict=True):
                w.result.set_result(row)

    async def _statement(self, batch: list[sq.SettleArgs]) -> list[asyncpg.Record]:
        async with self.pool.acquire() as conn:
            if len(batch) == 1:
                return [await sq.settle_job(conn, batch[0])]
            return await sq.settle_jobs(conn, batch)
