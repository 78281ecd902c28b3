"""Admissions batched at the wallet gate (gateway/billing/batching.py, `ADMIT_MANY`) leave the books
exactly as the same admissions one at a time do, and each is refused with the figures it would see
alone."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import msgspec
import pytest

from gateway.billing.admission import PriceCache, admit
from gateway.billing.batching import AdmissionBatcher
from gateway.billing.gate import WalletGate
from gateway.db import generations as gq
from gateway.db.pool import Pool
from gateway.errors import InsufficientCredits, RateLimited
from tests.conftest import Gateway
from tests.e2e.test_generation_billing import audit_clean
from tests.e2e.test_settlement_batches import PRICE, job_request, pool, principal, statement_sizes
from tests.waiting import eventually

__all__ = ["pool"]  # the fixture, shared with the settlement batches' tests


async def version(pool: Pool) -> int:
    async with pool.acquire() as conn:
        return int(await conn.fetchval("SELECT max(id) FROM price_versions"))


def args(tenant_id: UUID, current: int, n: int = 1, *, leased: bool = True, **changes: Any) -> gq.AdmitArgs:
    """An admission of `n` default-priced images; `changes` override its fields."""
    made = gq.AdmitArgs(
        job_id=uuid4(),
        tenant_id=tenant_id,
        key_id=None,
        operation="text-to-image",
        params={"prompt": "a lighthouse", "n": n},
        n=n,
        unit_price=PRICE,
        price_version_id=current,
        amount=n * PRICE,
        allowed_engines=None,
        password_hash=None,
        webhook_url=None,
        deadline_s=600,
        lease_owner="runner-test" if leased else None,
        lease_s=60,
        inputs=[],
    )
    return msgspec.structs.replace(made, **changes)


def varied(tenant_id: UUID, current: int) -> list[gq.AdmitArgs]:
    """Four admissions that use every column: inputs, engines, a password, a webhook. All are leased,
    so the test gateway's runner leaves them alone (a queued one is in the durability test)."""
    return [
        args(tenant_id, current),
        args(
            tenant_id,
            current,
            2,
            allowed_engines=["qolaba", "gpu"],
            password_hash="scrypt$x",
            webhook_url="https://hooks.test/j",
            inputs=[
                gq.Input("image", "inputs/a", "image/png", 64, 48),
                gq.Input("mask", "inputs/b", "image/png", 64, 48),
            ],
        ),
        args(tenant_id, current, inputs=[gq.Input("image", "inputs/c", "image/webp", 32, 32)]),
        args(tenant_id, current, 3, allowed_engines=[]),
    ]


async def books(conn: Any, tenant_id: UUID, jobs: list[UUID]) -> dict[str, Any]:
    """Everything an admission writes for the tenant, with job ids replaced by their place in `jobs`."""
    at = {job: i for i, job in enumerate(jobs)}
    job_rows = await conn.fetch("SELECT * FROM jobs WHERE tenant_id = $1", tenant_id)
    return {
        "wallet": dict(
            await conn.fetchrow("SELECT balance, held, active_jobs FROM wallets WHERE tenant_id = $1", tenant_id)
        ),
        "jobs": sorted(
            (
                at[r["id"]],
                r["state"],
                r["n"],
                r["unit_price"],
                r["params"],
                r["allowed_engines"],
                r["download_password_hash"],
                r["webhook_url"],
                r["lease_owner"],
                r["runs"],
                r["lease_expires_at"] is not None,
                r["started_at"] is not None,
                round((r["deadline_at"] - r["created_at"]).total_seconds()),
            )
            for r in job_rows
        ),
        "reservations": sorted(
            (at[r["job_id"]], r["state"], r["amount"], r["charged"], r["released"])
            for r in await conn.fetch("SELECT * FROM reservations WHERE tenant_id = $1", tenant_id)
        ),
        "results": sorted(
            (at[r["job_id"]], r["index"], r["status"])
            for r in await conn.fetch(
                "SELECT r.* FROM job_results r JOIN jobs j ON j.id = r.job_id WHERE j.tenant_id = $1", tenant_id
            )
        ),
        "inputs": sorted(
            (at[r["job_id"]], r["role"], r["blob_key"], r["content_type"], r["width"], r["height"])
            for r in await conn.fetch(
                "SELECT i.* FROM job_inputs i JOIN jobs j ON j.id = i.job_id WHERE j.tenant_id = $1", tenant_id
            )
        ),
    }


_PER_JOB = {"id", "tenant_id", "decided", "lease_expires_at", "deadline_at", "created_at", "started_at"}


def verdict(row: asyncpg.Record) -> dict[str, Any]:
    """What a caller learns from an admission's row: the wallet it saw and the job as inserted, less
    what differs from job to job (ids, times)."""
    return {k: v for k, v in row.items() if k not in _PER_JOB}


async def test_a_batch_of_several_tenants_writes_the_same_books_as_one_by_one(gateway: Gateway, pool: Pool) -> None:
    current = await version(pool)
    tenants = [(await gateway.tenant(credits=20))[0] for _ in range(4)]
    batched = [varied(tenant, current) for tenant in tenants[:2]]
    singles = [varied(tenant, current) for tenant in tenants[2:]]
    # Interleaved, as the lane takes them: each tenant's own order is what counts.
    mixed = [a for pair in zip(*batched, strict=True) for a in pair]
    async with pool.acquire() as conn:
        together = await gq.admit_jobs(conn, mixed)
        alone = [await gq.admit_job(conn, a) for a in [*singles[0], *singles[1]]]
        assert [r["id"] for r in together] == [a.job_id for a in mixed]
        assert all(r["decided"] for r in together)
        assert [r["notified"] for r in together] == [0] * len(mixed)
        by_tenant = [[r for r, a in zip(together, mixed, strict=True) if a.tenant_id == t] for t in tenants[:2]]
        assert [verdict(r) for r in by_tenant[0] + by_tenant[1]] == [verdict(r) for r in alone]
        for batch, single in zip(batched, singles, strict=True):
            assert await books(conn, batch[0].tenant_id, [a.job_id for a in batch]) == await books(
                conn, single[0].tenant_id, [a.job_id for a in single]
            )
    await audit_clean(gateway)


async def test_past_a_tenants_first_refusal_the_batch_decides_nothing_for_it(gateway: Gateway, pool: Pool) -> None:
    current = await version(pool)
    poor, _ = await gateway.tenant(credits=1.0)  # 1000 millicredits: 400 fits, then 800 does not
    busy, _ = await gateway.tenant(credits=20, max_concurrent_jobs=2)
    stale, _ = await gateway.tenant(credits=20)
    batch = [
        args(poor, current),
        args(busy, current),
        args(poor, current, 2),  # refused: 600 available
        args(busy, current),
        args(poor, current),  # would fit, but only because the one before was refused
        args(busy, current),  # refused: two unfinished jobs
        args(stale, current - 1),  # priced with an old version
        args(stale, current),
    ]
    async with pool.acquire() as conn:
        rows = await gq.admit_jobs(conn, batch)
        assert [r["id"] is not None for r in rows] == [True, True, False, True, False, False, False, False]
        assert [r["decided"] for r in rows] == [True, True, True, True, False, True, True, False]
        # A decided refusal carries the wallet it saw, as it would have alone.
        assert (rows[2]["wallet_balance"], rows[2]["wallet_held"], rows[2]["wallet_active_jobs"]) == (1000, 400, 1)
        assert (rows[5]["wallet_active_jobs"], rows[5]["wallet_max_concurrent_jobs"]) == (2, 2)
        assert rows[6]["current_price_version"] == current
        wallets = {
            r["tenant_id"]: (r["held"], r["active_jobs"])
            for r in await conn.fetch("SELECT * FROM wallets WHERE tenant_id = ANY($1)", [poor, busy, stale])
        }
        assert wallets == {poor: (400, 1), busy: (800, 2), stale: (0, 0)}
        # Nothing was written for the undecided ones: run alone, they are admitted.
        assert (
            await conn.fetchval("SELECT count(*) FROM jobs WHERE id = ANY($1)", [batch[4].job_id, batch[7].job_id]) == 0
        )
        assert (await gq.admit_job(conn, batch[4]))["id"] == batch[4].job_id
        assert (await gq.admit_job(conn, batch[7]))["id"] == batch[7].job_id
    await audit_clean(gateway)


async def test_admissions_waiting_for_the_gate_go_in_one_statement_and_are_refused_as_alone(
    gateway: Gateway, pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant_id, _ = await gateway.tenant(credits=1.2)  # three images' worth
    who = await principal(pool, tenant_id)
    statements = statement_sizes(monkeypatch, gq, "admit_job", "admit_jobs")
    gate = WalletGate()
    batcher, prices = AdmissionBatcher(pool, gate), PriceCache()
    specs = [job_request(), job_request(3), job_request(), job_request()]
    async with gate.hold(tenant_id):  # a settlement of the tenant is running
        waiting = [asyncio.create_task(admit(pool, who, spec, prices=prices, batcher=batcher)) for spec in specs]
        await eventually(lambda: len(batcher) == len(specs), what="every admission queued at the gate")
    outcomes = await asyncio.gather(*waiting, return_exceptions=True)
    # One statement for the four; the two after the refusal of the second ran again alone.
    assert statements == [4, 1, 1]
    admitted = [o for o in outcomes if not isinstance(o, BaseException)]
    assert [a.job_id for a in admitted] == [specs[0].job_id, specs[2].job_id, specs[3].job_id]
    refused = outcomes[1]
    assert isinstance(refused, InsufficientCredits)
    assert refused.extra == {"balance": 1.2, "available": 0.8, "price": 1.2, "shortfall": 0.4}
    assert len(batcher) == 0
    await audit_clean(gateway)


async def test_a_refusal_in_a_batch_names_the_wallet_it_saw(gateway: Gateway, pool: Pool) -> None:
    tenant_id, _ = await gateway.tenant(credits=1.0, max_concurrent_jobs=2)
    who = await principal(pool, tenant_id)
    gate = WalletGate()
    batcher, prices = AdmissionBatcher(pool, gate), PriceCache()
    async with gate.hold(tenant_id):
        waiting = [
            asyncio.create_task(admit(pool, who, spec, prices=prices, batcher=batcher))
            for spec in [job_request(), job_request(2)]
        ]
        await eventually(lambda: len(batcher) == 2, what="both admissions queued at the gate")
    first, second = await asyncio.gather(*waiting, return_exceptions=True)
    assert not isinstance(first, BaseException)
    assert isinstance(second, InsufficientCredits)
    assert second.extra == {"balance": 1.0, "available": 0.6, "price": 0.8, "shortfall": 0.2}
    async with gate.hold(tenant_id):
        waiting = [
            asyncio.create_task(admit(pool, who, job_request(), prices=prices, batcher=batcher)) for _ in range(3)
        ]
        await eventually(lambda: len(batcher) == 3, what="three admissions queued at the gate")
    outcomes = await asyncio.gather(*waiting, return_exceptions=True)
    assert not isinstance(outcomes[0], BaseException)
    assert isinstance(outcomes[1], RateLimited)  # two unfinished jobs now
    assert isinstance(outcomes[2], RateLimited)
    await audit_clean(gateway)


async def test_a_batch_commits_without_the_flush_wait_only_when_every_job_runs_here(
    gateway: Gateway, pool: Pool
) -> None:
    current = await version(pool)
    tenants = [(await gateway.tenant(credits=20))[0] for _ in range(2)]
    async with pool.acquire() as conn:
        leased = await gq.admit_jobs(conn, [args(t, current) for t in tenants])
        assert [r["synchronous_commit"] for r in leased] == ["off", "off"]
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
        mixed = await gq.admit_jobs(conn, [args(tenants[0], current), args(tenants[1], current, leased=False)])
        assert [r["synchronous_commit"] for r in mixed] == ["on", "on"]
        assert [r["notified"] for r in mixed] == [1, 1]
        assert [(r["state"], r["runs"], r["lease_owner"]) for r in mixed] == [
            ("running", 1, "runner-test"),
            ("queued", 0, None),
        ]
        refused = await gq.admit_jobs(conn, [args(t, current, amount=10**9, n=1) for t in tenants])
        assert [r["id"] for r in refused] == [None, None]
        assert [r["synchronous_commit"] for r in refused] == ["on", "on"]
    await audit_clean(gateway)


async def test_with_the_process_quiet_an_admission_runs_at_once_and_later_ones_batch_behind_it(
    gateway: Gateway, pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant_id, _ = await gateway.tenant()
    who = await principal(pool, tenant_id)
    statements = statement_sizes(monkeypatch, gq, "admit_job", "admit_jobs")
    prices = PriceCache()
    # More loop turns than could pass in the time allowed: only a statement run at once finishes.
    lone = AdmissionBatcher(pool, WalletGate(), turns=10**8, quiet=lambda: True)
    first = await asyncio.wait_for(admit(pool, who, job_request(), prices=prices, batcher=lone), 5)
    assert first.job is not None
    assert statements == [1]
    # While one runs so, the others wait for the gate and go together, as when the process is busy.
    batcher = AdmissionBatcher(pool, WalletGate(), quiet=lambda: True)
    specs = [job_request(), job_request(), job_request()]
    admitted = await asyncio.gather(*(admit(pool, who, spec, prices=prices, batcher=batcher) for spec in specs))
    assert [a.job_id for a in admitted] == [spec.job_id for spec in specs]
    assert statements == [1, 1, 2]
    assert len(batcher) == 0
    await audit_clean(gateway)
