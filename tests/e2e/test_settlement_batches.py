"""Settlements batched at the wallet gate (gateway/billing/batching.py, `SETTLE_MANY`) leave the books
exactly as the same settlements one at a time do, and a batch's failures stay with their own jobs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import msgspec
import pytest

from gateway.auth.keys import Principal
from gateway.billing.admission import JobRequest, admit
from gateway.billing.batching import SettlementBatcher
from gateway.billing.gate import WalletGate
from gateway.billing.settlement import Outcome, StoredImage, settlement_args
from gateway.db import billing as bq
from gateway.db import jobs as jq
from gateway.db import settlements as sq
from gateway.db.pool import Pool, create_pool
from gateway.domain.generation import EngineAttempt, EngineSpend
from tests.conftest import Gateway
from tests.e2e.test_generation_billing import audit_clean
from tests.waiting import eventually, run_ready_tasks

PRICE = 400  # millicredits: the default price of a 512x512, 30-step image


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[Pool]:
    """The gateway's kind of pool (jsonb through msgspec), beside the test gateway's plain one."""
    pool = await create_pool(database_url, min_size=1, max_size=8, statement_cache_size=100)
    yield pool
    await pool.close()


async def principal(pool: Pool, tenant_id: UUID) -> Principal:
    async with pool.acquire() as conn:
        key_id = await conn.fetchval("SELECT id FROM api_keys WHERE tenant_id = $1", tenant_id)
    return Principal("tenant", key_id, tenant_id, frozenset({"generate"}), 100_000)


def job_request(n: int = 1) -> JobRequest:
    """A sync text-to-image job of `n` default-priced images, leased to a runner that is not there."""
    return JobRequest(
        job_id=uuid4(),
        operation="text-to-image",
        params={"prompt": "a lighthouse", "n": n},
        width=512,
        height=512,
        steps=30,
        n=n,
        model=None,
        allowed_engines=None,
        password_hash=None,
        webhook_url=None,
        inputs=[],
        deadline_s=600,
        lease_owner="runner-test",
        lease_s=60,
    )


async def admitted(pool: Pool, who: Principal, n: int = 1) -> UUID:
    spec = job_request(n)
    await admit(pool, who, spec)
    return spec.job_id


def image(job_id: UUID, index: int) -> StoredImage:
    file_id = f"file_{job_id.hex[:12]}_{index}"
    return StoredImage(index, file_id, f"outputs/{job_id}/{index}", "image/png", 123, "etag", f"{index}.png", 7 + index)


def attempt(outcome: str, images: int) -> EngineAttempt:
    return EngineAttempt(engine="qolaba", outcome=outcome, latency_ms=12, images=images)  # type: ignore[arg-type]


async def scenario(gw: Gateway, pool: Pool) -> tuple[UUID, list[sq.SettleArgs]]:
    """A tenant with a webhook, five running jobs and one settled already, and the settlements of
    the six: success, partial success, engine failure, canceled while running, the settled one
    again, another success; the wallet starts below its low-balance threshold and ends above it."""
    tenant_id, _ = await gw.tenant(credits=5.0)
    who = await principal(pool, tenant_id)
    jobs = [await admitted(pool, who, n=2 if i == 1 else 1) for i in range(6)]
    async with pool.acquire() as conn:
        await conn.execute("UPDATE tenants SET webhook_url = 'https://hooks.test/t' WHERE id = $1", tenant_id)
        await jq.request_cancel(conn, jobs[3], tenant_id)
        done = settlement_args(jobs[4], PRICE, 1, Outcome(state="failed"), file_ttl_s=3600, unless_canceled=False)
        await sq.settle_job(conn, done)
        wallet = await conn.fetchrow("SELECT balance, held FROM wallets WHERE tenant_id = $1", tenant_id)
        assert wallet is not None
        # Raised above what is available now, which re-arms the alert. Settling only frees credits, so
        # the first settlement alerts, though the batch as a whole ends above the threshold.
        await bq.set_low_balance_threshold(conn, tenant_id, wallet["balance"] - wallet["held"] + PRICE)
    spend = EngineSpend(vendor_credits=2.5, gpu_seconds=0.0)
    outcomes = [
        Outcome(state="succeeded", engine="qolaba", images=[image(jobs[0], 0)], spend=spend,
                attempts=[attempt("succeeded", 1)]),
        Outcome(state="succeeded", engine="qolaba", images=[image(jobs[1], 1)], failed={0: "blurred"},
                spend=spend, attempts=[attempt("failed", 0), attempt("succeeded", 1)]),
        Outcome(state="failed", error={"title": "Engines down", "detail": "all failed"},
                attempts=[attempt("failed", 0)]),
        Outcome(state="succeeded", engine="qolaba", images=[image(jobs[3], 0)], attempts=[attempt("succeeded", 1)]),
        Outcome(state="succeeded", engine="qolaba", images=[image(jobs[4], 0)]),
        Outcome(state="succeeded", engine="qolaba", images=[image(jobs[5], 0)], spend=spend,
                attempts=[attempt("succeeded", 1)]),
    ]  # fmt: skip
    batch = [
        settlement_args(job, PRICE, 2 if i == 1 else 1, outcome, file_ttl_s=3600, unless_canceled=True)
        for i, (job, outcome) in enumerate(zip(jobs, outcomes, strict=True))
    ]
    return tenant_id, batch


async def books(conn: Any, tenant_id: UUID, jobs: list[UUID]) -> dict[str, Any]:
    """Everything a settlement writes for the tenant, with job ids replaced by their place in `jobs`."""
    at = {job: i for i, job in enumerate(jobs)}

    def rows(records: list[asyncpg.Record], job_column: str = "job_id") -> list[dict[str, Any]]:
        return [{k: (at.get(v, v) if k == job_column else v) for k, v in r.items()} for r in records]

    return {
        "wallet": dict(
            await conn.fetchrow(
                "SELECT balance, held, active_jobs, low_balance_notified FROM wallets WHERE tenant_id = $1", tenant_id
            )
        ),
        "ledger": rows(
            await conn.fetch(
                "SELECT kind, amount, balance_after, job_id FROM ledger_entries WHERE tenant_id = $1 ORDER BY id",
                tenant_id,
            )
        ),
        "reservations": sorted(
            (at[r["job_id"]], r["state"], r["charged"], r["released"])
            for r in await conn.fetch("SELECT * FROM reservations WHERE tenant_id = $1", tenant_id)
        ),
        "jobs": sorted(
            (
                at[r["id"]],
                r["state"],
                r["charged"],
                r["images_succeeded"],
                r["engine"],
                r["progress"],
                r["vendor_credits"],
                r["lease_owner"],
                r["error"] is not None,
                r["finished_at"] is not None,
            )
            for r in await conn.fetch("SELECT * FROM jobs WHERE tenant_id = $1", tenant_id)
        ),
        "results": sorted(
            (at[r["job_id"]], r["index"], r["status"], r["file_id"] is not None, r["seed"], r["error"])
            for r in await conn.fetch(
                "SELECT r.* FROM job_results r JOIN jobs j ON j.id = r.job_id WHERE j.tenant_id = $1", tenant_id
            )
        ),
        "files": sorted(
            (at[r["job_id"]], r["content_type"], r["size"])
            for r in await conn.fetch("SELECT * FROM files WHERE tenant_id = $1", tenant_id)
        ),
        "usage": [
            dict(r)
            for r in await conn.fetch(
                """SELECT operation, engine, jobs, images, failed_images, charged, vendor_credits, gpu_seconds
                   FROM usage_daily WHERE tenant_id = $1 ORDER BY engine""",
                tenant_id,
            )
        ],
        "attempts": sorted(
            (at[r["job_id"]], r["engine"], r["outcome"], r["images"])
            for r in await conn.fetch(
                "SELECT a.* FROM job_attempts a JOIN jobs j ON j.id = a.job_id WHERE j.tenant_id = $1", tenant_id
            )
        ),
        "webhooks": sorted(
            (r["event_type"], r["url"], r["payload"]["data"].get("state"), r["payload"]["data"].get("available"))
            for r in await conn.fetch("SELECT * FROM webhook_outbox WHERE tenant_id = $1", tenant_id)
        ),
    }


def statement_sizes(monkeypatch: pytest.MonkeyPatch, module: Any, one: str, many: str) -> list[int]:
    """The number of jobs in each statement run through `module.one` (alone) or `module.many`, in order."""
    sizes: list[int] = []
    run_one: Callable[[Any, Any], Awaitable[asyncpg.Record]] = getattr(module, one)
    run_many: Callable[[Any, list[Any]], Awaitable[list[asyncpg.Record]]] = getattr(module, many)

    async def counted_one(conn: Any, args: Any) -> asyncpg.Record:
        sizes.append(1)
        return await run_one(conn, args)

    async def counted_many(conn: Any, batch: list[Any]) -> list[asyncpg.Record]:
        sizes.append(len(batch))
        return await run_many(conn, batch)

    monkeypatch.setattr(module, one, counted_one)
    monkeypatch.setattr(module, many, counted_many)
    return sizes


async def test_one_batch_writes_the_same_books_as_its_settlements_one_by_one(gateway: Gateway, pool: Pool) -> None:
    batched_tenant, batched = await scenario(gateway, pool)
    single_tenant, singles = await scenario(gateway, pool)
    async with pool.acquire() as conn:
        together = await sq.settle_jobs(conn, batched)
        alone = [await sq.settle_job(conn, args) for args in singles]
        for one, other in zip(together, alone, strict=True):
            assert (one["closed"], one["cancel_was_requested"], one["state"]) == (
                other["closed"],
                other["cancel_was_requested"],
                other["state"],
            )
        assert [bool(r["closed"]) for r in together] == [True, True, True, False, False, True]
        assert together[3]["cancel_was_requested"]
        assert together[3]["id"] is None
        assert [r["id"] for r in together] == [
            a.job_id if r["closed"] else None for a, r in zip(batched, together, strict=True)
        ]
        expected = await books(conn, single_tenant, [a.job_id for a in singles])
        assert await books(conn, batched_tenant, [a.job_id for a in batched]) == expected
    # The ledger's running balance went down charge by charge, and the threshold was crossed once.
    ledger = expected["ledger"]
    charges = [e for e in ledger if e["kind"] == "charge"]
    assert [e["job_id"] for e in charges] == [0, 1, 5]
    assert [e["balance_after"] for e in charges] == [
        ledger[0]["balance_after"] - PRICE,
        ledger[0]["balance_after"] - 2 * PRICE,
        ledger[0]["balance_after"] - 3 * PRICE,
    ]
    assert [w[0] for w in expected["webhooks"]].count("balance.low") == 1
    await audit_clean(gateway)


async def test_settlements_waiting_for_the_gate_go_in_one_statement(
    gateway: Gateway, pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant_id, batch = await scenario(gateway, pool)
    statements = statement_sizes(monkeypatch, sq, "settle_job", "settle_jobs")
    gate = WalletGate()
    batcher = SettlementBatcher(pool, gate)
    async with gate.hold(tenant_id):  # an admission of the tenant is running
        waiting = [asyncio.create_task(batcher.settle(tenant_id, args)) for args in batch]
        await eventually(lambda: len(batcher) == len(batch), what="every settlement queued at the gate")
    rows = await asyncio.gather(*waiting)
    assert statements == [len(batch)]
    assert [r["closed"] for r in rows] == [1, 1, 1, 0, 0, 1]
    assert len(batcher) == 0
    await audit_clean(gateway)


async def test_a_tenants_waiting_settlements_take_its_gate_once_for_their_group(
    gateway: Gateway, pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only one task per tenant waits at the gate; the jobs it takes into its group wait for their
    # statement, not for a turn at the gate each after it.
    tenant_id, batch = await scenario(gateway, pool)
    gate = WalletGate()
    batcher = SettlementBatcher(pool, gate)
    turns: list[UUID] = []
    hold = gate.hold

    def counted(tenant: UUID) -> Any:
        turns.append(tenant)
        return hold(tenant)

    async with gate.hold(tenant_id):  # an admission of the tenant is running
        monkeypatch.setattr(gate, "hold", counted)
        waiting = [asyncio.create_task(batcher.settle(tenant_id, args)) for args in batch]
        await eventually(lambda: len(batcher) == len(batch), what="every settlement queued at the gate")
    rows = await asyncio.gather(*waiting)
    assert [r["closed"] for r in rows] == [1, 1, 1, 0, 0, 1]
    assert turns == [tenant_id]
    await audit_clean(gateway)


async def test_a_batch_the_database_refuses_is_settled_job_by_job(gateway: Gateway, pool: Pool) -> None:
    tenant_id, batch = await scenario(gateway, pool)
    bad = batch[2] = msgspec.structs.replace(
        batch[2],
        results=[sq.ResultRow(0, "bogus", None, None, "x")],  # breaks job_results' CHECK
    )
    gate = WalletGate()
    batcher = SettlementBatcher(pool, gate)
    async with gate.hold(tenant_id):
        waiting = [asyncio.create_task(batcher.settle(tenant_id, args)) for args in batch]
        await eventually(lambda: len(batcher) == len(batch), what="every settlement queued at the gate")
    outcomes = await asyncio.gather(*waiting, return_exceptions=True)
    assert isinstance(outcomes[2], asyncpg.CheckViolationError)
    assert [o["closed"] for i, o in enumerate(outcomes) if i != 2] == [1, 1, 0, 0, 1]  # type: ignore[index]
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT state FROM reservations WHERE job_id = $1", bad.job_id) == "held"
    assert len(batcher) == 0


async def test_a_settlement_cancelled_while_it_waits_leaves_the_queue(gateway: Gateway, pool: Pool) -> None:
    tenant_id, batch = await scenario(gateway, pool)
    gate = WalletGate()
    batcher = SettlementBatcher(pool, gate)
    async with gate.hold(tenant_id):
        first = asyncio.create_task(batcher.settle(tenant_id, batch[0]))
        second = asyncio.create_task(batcher.settle(tenant_id, batch[1]))
        await eventually(lambda: len(batcher) == 2, what="both settlements queued at the gate")
        first.cancel()
        await eventually(lambda: len(batcher) == 1, what="the cancelled settlement out of the queue")
    assert (await second)["closed"] == 1
    assert first.cancelled()
    assert len(batcher) == 0


async def test_a_batch_of_several_tenants_writes_the_same_books_as_one_by_one(gateway: Gateway, pool: Pool) -> None:
    first, first_batch = await scenario(gateway, pool)
    second, second_batch = await scenario(gateway, pool)
    first_alone, first_singles = await scenario(gateway, pool)
    second_alone, second_singles = await scenario(gateway, pool)
    # Interleaved, as the lane takes them: each tenant's own order is what counts.
    mixed = [args for pair in zip(first_batch, second_batch, strict=True) for args in pair]
    async with pool.acquire() as conn:
        together = await sq.settle_jobs(conn, mixed)
        for args in [*first_singles, *second_singles]:
            await sq.settle_job(conn, args)
        closed = (True, True, True, False, False, True)  # as in the one-tenant batch, each twice
        assert [bool(r["closed"]) for r in together] == [c for c in closed for _ in "ab"]
        for tenant, batch, alone, singles in (
            (first, first_batch, first_alone, first_singles),
            (second, second_batch, second_alone, second_singles),
        ):
            assert await books(conn, tenant, [a.job_id for a in batch]) == await books(
                conn, alone, [a.job_id for a in singles]
            )
    await audit_clean(gateway)


async def test_settlements_of_several_tenants_waiting_for_the_lane_go_in_one_statement(
    gateway: Gateway, pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    busy_tenant, (busy, *_) = await scenario(gateway, pool)
    first, first_batch = await scenario(gateway, pool)
    second, second_batch = await scenario(gateway, pool)
    statements: list[list[UUID]] = []
    release = asyncio.Event()
    settle_job, settle_jobs = sq.settle_job, sq.settle_jobs

    async def held_one(conn: Any, args: sq.SettleArgs) -> asyncpg.Record:
        statements.append([args.job_id])
        if args is busy:
            await release.wait()  # the lane stays taken while the others arrive
        return await settle_job(conn, args)

    async def counted(conn: Any, batch: list[sq.SettleArgs]) -> list[asyncpg.Record]:
        statements.append([args.job_id for args in batch])
        return await settle_jobs(conn, batch)

    monkeypatch.setattr(sq, "settle_job", held_one)
    monkeypatch.setattr(sq, "settle_jobs", counted)
    batcher = SettlementBatcher(pool, WalletGate(), lanes=1)  # the one lane is busy with `busy`
    running = asyncio.create_task(batcher.settle(busy_tenant, busy))
    await eventually(lambda: statements == [[busy.job_id]], what="the busy statement running")
    waiting = [
        asyncio.create_task(batcher.settle(tenant, args))
        for tenant, batch in ((first, first_batch[:3]), (second, second_batch[:3]))
        for args in batch
    ]
    await eventually(lambda: len(batcher) == 6, what="all six settlements waiting for the lane")
    release.set()
    assert (await running)["closed"] == 1
    rows = await asyncio.gather(*waiting)
    # Each tenant's three settlements went through its gate as one group and waited for the lane;
    # the two groups shared the next statement, each tenant's in its order.
    a, b = [x.job_id for x in first_batch[:3]], [x.job_id for x in second_batch[:3]]
    assert statements == [[busy.job_id], [*a, *b]]
    assert [r["closed"] for r in rows] == [1, 1, 1, 1, 1, 1]
    assert len(batcher) == 0
    await audit_clean(gateway)


async def test_settlements_of_several_tenants_that_arrive_together_share_a_statement_with_lanes_free(
    gateway: Gateway, pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenants = [await scenario(gateway, pool) for _ in range(3)]
    statements = statement_sizes(monkeypatch, sq, "settle_job", "settle_jobs")
    batcher = SettlementBatcher(pool, WalletGate())  # both lanes free
    # As the requests of one burst do: each reaches its settlement a turn or two after the last.
    waiting = []
    for tenant, (args, *_) in tenants:
        waiting.append(asyncio.create_task(batcher.settle(tenant, args)))
        await asyncio.sleep(0)  # one turn of the loop, not a wait: the burst's pace is what is tested
    rows = await asyncio.gather(*waiting)
    assert statements == [3]
    assert [r["closed"] for r in rows] == [1, 1, 1]
    await audit_clean(gateway)


async def test_a_second_lane_settles_while_the_first_statement_runs(
    gateway: Gateway, pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    busy_tenant, (busy, *_) = await scenario(gateway, pool)
    other_tenant, (other, *_) = await scenario(gateway, pool)
    running_busy, release = asyncio.Event(), asyncio.Event()
    settle_job = sq.settle_job

    async def held_one(conn: Any, args: sq.SettleArgs) -> asyncpg.Record:
        if args is busy:
            running_busy.set()
            await release.wait()
        return await settle_job(conn, args)

    monkeypatch.setattr(sq, "settle_job", held_one)
    batcher = SettlementBatcher(pool, WalletGate())  # two lanes
    running = asyncio.create_task(batcher.settle(busy_tenant, busy))
    await asyncio.wait_for(running_busy.wait(), timeout=10)
    assert (await asyncio.wait_for(batcher.settle(other_tenant, other), timeout=10))["closed"] == 1
    assert not running.done()
    release.set()
    assert (await running)["closed"] == 1
    await audit_clean(gateway)


async def test_a_tenant_keeps_its_gate_until_the_statement_that_took_its_settlement_ends(
    gateway: Gateway, pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both lanes busy; then X's settlement and T's queue for a lane, X's first. When one lane frees,
    # X's group takes both into one statement (held here); when the other frees, T's own group finds
    # nothing left to run. T's gate must stay taken until that statement ends, or an admission of T
    # would wait on T's wallet row lock in PostgreSQL after all.
    (first_tenant, (first, *_)), (second_tenant, (second, *_)) = [await scenario(gateway, pool) for _ in "ab"]
    (x_tenant, (x, *_)), (t_tenant, (t, *_)) = [await scenario(gateway, pool) for _ in "xt"]
    held = {first.job_id: asyncio.Event(), second.job_id: asyncio.Event()}
    running: list[list[UUID]] = []  # the statements begun, by their jobs
    batch_held = asyncio.Event()
    settle_job, settle_jobs = sq.settle_job, sq.settle_jobs

    async def held_one(conn: Any, args: sq.SettleArgs) -> asyncpg.Record:
        running.append([args.job_id])
        if args.job_id in held:
            await held[args.job_id].wait()
        return await settle_job(conn, args)

    async def held_many(conn: Any, batch: list[sq.SettleArgs]) -> list[asyncpg.Record]:
        running.append([args.job_id for args in batch])
        await batch_held.wait()
        return await settle_jobs(conn, batch)

    monkeypatch.setattr(sq, "settle_job", held_one)
    monkeypatch.setattr(sq, "settle_jobs", held_many)
    gate = WalletGate()
    batcher = SettlementBatcher(pool, gate)  # two lanes
    busy = []
    for tenant, args in ((first_tenant, first), (second_tenant, second)):  # apart, so each takes a lane
        busy.append(asyncio.create_task(batcher.settle(tenant, args)))
        await eventually(lambda: len(running) == len(busy), what="a busy statement running")
    settling = [asyncio.create_task(batcher.settle(x_tenant, x))]
    await eventually(lambda: len(batcher) == 1, what="X's settlement waiting for a lane")
    settling.append(asyncio.create_task(batcher.settle(t_tenant, t)))
    await eventually(lambda: len(batcher) == 2, what="T's settlement waiting for a lane")
    held[first.job_id].set()  # a lane frees: X's group takes X and T into one statement
    await eventually(lambda: [x.job_id, t.job_id] in running, what="X and T in one statement")
    held[second.job_id].set()  # the other lane frees: T's group finds nothing to run
    await asyncio.gather(*busy)
    admission = asyncio.create_task(_hold_briefly(gate, t_tenant))
    await run_ready_tasks()  # through the gate at once if it is free: it takes no I/O
    gate_kept = not admission.done()  # T's gate still taken by its settlement
    batch_held.set()
    assert [r["closed"] for r in await asyncio.gather(*settling)] == [1, 1]
    await asyncio.wait_for(admission, timeout=10)
    assert gate_kept
    await audit_clean(gateway)


async def _hold_briefly(gate: WalletGate, tenant_id: UUID) -> None:
    async with gate.hold(tenant_id):
        pass
