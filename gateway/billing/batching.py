"""Wallet statements that wait together run as one: group commit for admissions and for settlements.

Two queues. The wallet gate (gate.py) lets one wallet statement per tenant at a time through, so a
tenant with many requests in flight queues: its jobs of one kind (admission or settlement) wait in
a list, and one task per tenant and kind waits at the gate for them and takes every job waiting by
then, one per job, as a group, then the next group, while any wait. A job taken into a group waits
only for its statement; when each job waited at the gate itself, the jobs of a group of 32 passed
it one loop turn after another once their statement had ended, and the tenant's next group waited
behind them (`bench/gateway.py --modes hot`: one hot tenant 10-20 % faster without). Groups
of all tenants then queue for that kind's statement lanes, which run at most `lanes` statements at
a time: whoever gets a lane takes every group waiting by then (up to `max_batch` jobs) and runs them
as one statement (`ADMIT_MANY`, gateway/db/generations.py; `SETTLE_MANY`, gateway/db/settlements.py).
The others find their result ready when their turn comes. A group keeps its tenant's gate until
its statement has committed, so a batch holds the gates of all its tenants and no statement of
theirs from this process waits on a wallet row lock.

One executor start-up, one commit and one WAL flush then serve many jobs, and batches grow with the
load. Alone, a job runs the one-job statement. When the process is quiet (`quiet`: the runner has no
other job running) and no statement of the kind runs or waits, nobody could join: the caller then
takes the gate and a lane and runs its statement in its own task, without the turns, the leader
task and the hand-offs between them, which cost a lone settlement about 60 µs (`bench/wallet.py`
at one request in flight: 933 µs against 872). Jobs that arrive
meanwhile queue behind it as usual. Before it takes a
lane, a group lets the event loop go round `turns` times: requests that reach the gateway in one
burst get to their statement over a few turns, and with lanes free each would otherwise run alone.
Idle, a turn costs microseconds; busy, a turn is long and many join. With 32 tenants at 16 clients
this took the statements from about 2 jobs each to about 20, and the gateway from about 680 to
about 950 requests/s, with no change to the latency added at 200 requests/s (`bench/gateway.py
--modes many,rate --tenants 32 --concurrency 16`). Two lanes per kind, so that one batch forms
while the other commits: with one, the gateway benchmark's 32 tenants spent more gateway CPU per
request waiting in turn; with two, PostgreSQL's CPU per request fell by a quarter
(`bench/gateway.py --modes many`). Wallets are locked in tenant order, so concurrent batches (two
lanes, or other processes) cannot deadlock each other.

A batch is all or nothing in PostgreSQL. When the server refuses it (a constraint, say), it was
rolled back whole, so each of its jobs runs again alone and a problem stays with its own job. Any
other failure (the connection lost) leaves the outcome unknown: it is reported to every job of the
batch, as it would have been to one job alone, and nothing is run twice (running a committed
settlement again would find the reservation closed, and the runner would throw its images away).
The task that leads a tenant's groups is nobody's request, so cancelling a request leaves the rest
waiting for nothing; a request cancelled before its job is taken leaves the list. An admission
whose caller is gone by the time its batch commits leaves a job leased to this process that nobody
runs: the lease expires and a runner claims it, as after a crash.

Admissions of one tenant in one batch are checked in order, each against the wallet the ones before
it left, as if they had run one by one. Past a tenant's first refusal, the rest are not decided by
the batch (a smaller request might still fit): each runs again alone. Refusals are the rare case.
"""

from __future__ import annotations

import asyncio
import contextvars
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar
from uuid import UUID

from gateway.billing.gate import WalletGate
from gateway.db import Conn
from gateway.db import generations as gq
from gateway.db import settlements as sq
from gateway.db.pool import Pool
from gateway.db.types import PostgresError, Row

Args = TypeVar("Args", sq.SettleArgs, gq.AdmitArgs)


@dataclass(eq=False)
class _Waiting(Generic[Args]):
    args: Args
    result: asyncio.Future[Row]
    grouped: bool = False  # taken from its tenant's queue
    batched: bool = False  # taken from the lane's queue into a statement


@dataclass
class _GroupCommit(ABC, Generic[Args]):
    """Per-process, one per kind of statement; both share the runner's wallet gate."""

    pool: Pool
    gate: WalletGate
    max_batch: int = 32
    lanes: int = 2
    turns: int = 6
    # True when no other job of this process could reach this kind of statement soon (module docstring);
    # the runner's count of running jobs says so.
    quiet: Callable[[], bool] = lambda: False
    _running: int = field(default=0, init=False)
    _waiting: dict[UUID, list[_Waiting[Args]]] = field(default_factory=dict, init=False)
    _ready: list[_Waiting[Args]] = field(default_factory=list, init=False)
    _lane: asyncio.Semaphore = field(init=False)
    _leaders: dict[UUID, asyncio.Task[None]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self._lane = asyncio.Semaphore(self.lanes)

    async def _submit(self, tenant_id: UUID, args: Args) -> Row:
        """The statement's row for `args`, run alone or with others."""
        if self._running == 0 and not self._waiting and not self._ready and self.quiet():
            # Nothing to wait for and nobody to wait with: the caller runs its statement itself.
            return await self._alone(tenant_id, args)
        me = _Waiting(args, asyncio.get_running_loop().create_future())
        # Nobody may be left to read a failure (its caller was cancelled): mark it read.
        me.result.add_done_callback(lambda f: f.cancelled() or f.exception())
        waiting = self._waiting.setdefault(tenant_id, [])
        waiting.append(me)
        if tenant_id not in self._leaders:
            # In a context of its own: the leader serves many requests, so its statements belong to
            # none of their traces or log contexts (each request's span covers its own wait).
            task = asyncio.create_task(
                self._lead(tenant_id, waiting), name="wallet-statement", context=contextvars.Context()
            )
            self._leaders[tenant_id] = task
        try:
            return await asyncio.shield(me.result)
        except asyncio.CancelledError:
            if not me.grouped:  # cancelled while waiting for the gate: it leaves the queue
                waiting.remove(me)
                me.result.cancel()
            raise

    async def _alone(self, tenant_id: UUID, args: Args) -> Row:
        """`args` run by itself, at once, in the caller's task: the tenant's gate, a lane, the one-job statement."""
        async with self.gate.hold(tenant_id), self._lane:
            (row,) = await self._statement([args])
            return row

    async def _lead(self, tenant_id: UUID, waiting: list[_Waiting[Args]]) -> None:
        """Take the tenant's gate for each group of its waiting jobs in turn, while any wait. One task
        per tenant and kind waits at the gate, so a job taken into a group waits for nothing else."""
        try:
            while waiting:
                async with self.gate.hold(tenant_id):
                    if waiting:  # the rest may have been cancelled meanwhile
                        await self._through_lane(self._group(waiting))
        finally:
            for w in waiting:  # cancelled (the loop is shutting down): nobody is left hanging
                w.result.cancel()
            # In the same step as the last look at `waiting`: a job queued after it starts a new leader.
            del self._waiting[tenant_id], self._leaders[tenant_id]

    def __len__(self) -> int:
        """Jobs not yet in a statement (for tests and debugging)."""
        return sum(len(waiting) for waiting in self._waiting.values()) + len(self._ready)

    def _group(self, waiting: list[_Waiting[Args]]) -> list[_Waiting[Args]]:
        """The tenant's waiting jobs that one statement can take, oldest first; they leave `waiting`."""
        group = self._take(waiting)
        for w in group:
            w.grouped = True
        waiting[:] = [w for w in waiting if not w.grouped]
        return group

    async def _through_lane(self, group: list[_Waiting[Args]]) -> None:
        """Queue `group` for a lane; whoever gets one runs what is queued then, oldest first."""
        self._ready.extend(group)
        try:
            for _ in range(self.turns):  # let the requests of the same burst join (module docstring)
                await asyncio.sleep(0)
            while not all(w.batched for w in group):
                async with self._lane:
                    if self._ready:
                        await self._run(self._batch())
            # Another lane may have taken the group and still be running it: the tenant's gate,
            # held by the leader that awaits this, is kept until the group's statement has ended.
            if not all(w.result.done() for w in group):
                await asyncio.wait([w.result for w in group])
        finally:  # cancelled (the loop is shutting down): nobody is left hanging
            for w in group:
                if not w.batched:
                    self._ready.remove(w)
                    w.result.cancel()

    def _batch(self) -> list[_Waiting[Args]]:
        """The oldest queued jobs that one statement can take; they leave the queue."""
        batch = self._take(self._ready)
        for w in batch:
            w.batched = True
        self._ready[:] = [w for w in self._ready if not w.batched]
        return batch

    async def _run(self, batch: list[_Waiting[Args]]) -> None:
        try:
            await self._execute(batch)
        finally:
            for w in batch:
                if not w.result.done():
                    w.result.cancel()

    async def _execute(self, batch: list[_Waiting[Args]]) -> None:
        try:
            rows = await self._statement([w.args for w in batch])
        except PostgresError as exc:
            if len(batch) == 1:
                batch[0].result.set_exception(exc)
                return
            for w in batch:  # rolled back whole: each alone, so one job's problem stays its own
                try:
                    (row,) = await self._statement([w.args])
                except Exception as alone:  # handed to that job's caller
                    w.result.set_exception(alone)
                else:
                    w.result.set_result(row)
        except Exception as exc:  # outcome unknown: report it to everyone, run nothing again
            for w in batch:
                w.result.set_exception(exc)
        else:
            for w, row in zip(batch, rows, strict=True):
                w.result.set_result(row)

    async def _statement(self, batch: list[Args]) -> list[Row]:
        self._running += 1
        try:
            async with self.pool.acquire() as conn:
                if len(batch) == 1:
                    return [await self._one(conn, batch[0])]
                return await self._many(conn, batch)
        finally:
            self._running -= 1

    def _take(self, queue: list[_Waiting[Args]]) -> list[_Waiting[Args]]:
        """Up to `max_batch` of `queue`, in order, one per job, each one the first can share a statement with."""
        taken: list[_Waiting[Args]] = []
        jobs: set[UUID] = set()
        for w in queue:
            if len(taken) >= self.max_batch:
                break
            if w.args.job_id not in jobs and self._compatible(queue[0].args, w.args):
                taken.append(w)
                jobs.add(w.args.job_id)
        return taken

    def _compatible(self, first: Args, other: Args) -> bool:
        return True

    @abstractmethod
    async def _one(self, conn: Conn, args: Args) -> Row:
        """The kind's one-job statement."""

    @abstractmethod
    async def _many(self, conn: Conn, batch: list[Args]) -> list[Row]:
        """The kind's statement for several jobs, one row per job in order."""


@dataclass
class SettlementBatcher(_GroupCommit[sq.SettleArgs]):
    """Settlements (`SETTLE` alone, `SETTLE_MANY` together, which takes one file TTL)."""

    async def settle(self, tenant_id: UUID, args: sq.SettleArgs) -> Row:
        """The settlement statement's row for `args`, run alone or with others."""
        return await self._submit(tenant_id, args)

    def _compatible(self, first: sq.SettleArgs, other: sq.SettleArgs) -> bool:
        return first.file_ttl_s == other.file_ttl_s

    async def _one(self, conn: Conn, args: sq.SettleArgs) -> Row:
        return await sq.settle_job(conn, args)

    async def _many(self, conn: Conn, batch: list[sq.SettleArgs]) -> list[Row]:
        return await sq.settle_jobs(conn, batch)


@dataclass
class AdmissionBatcher(_GroupCommit[gq.AdmitArgs]):
    """Admissions (`ADMIT` alone, `ADMIT_MANY` together)."""

    async def admit(self, tenant_id: UUID, args: gq.AdmitArgs) -> Row:
        """The admission statement's row for `args`, as `admit_job` returns it, run alone or with others."""
        row = await self._submit(tenant_id, args)
        if "decided" in row and not row["decided"]:  # after its tenant's first refusal in the batch
            return await self._alone(tenant_id, args)
        return row

    async def _one(self, conn: Conn, args: gq.AdmitArgs) -> Row:
        return await gq.admit_job(conn, args)

    async def _many(self, conn: Conn, batch: list[gq.AdmitArgs]) -> list[Row]:
        return await gq.admit_jobs(conn, batch)
