"""The wallet gate: one statement per tenant at a time, tenants independent, nothing left behind."""

from __future__ import annotations

import asyncio
from uuid import UUID, uuid4

import pytest

from gateway.billing.gate import WalletGate


@pytest.mark.parametrize("width", [1, 2])
async def test_a_tenant_has_at_most_width_statements_in_while_other_tenants_go_at_once(width: int) -> None:
    gate = WalletGate(width=width)
    busy = uuid4()
    inside: list[str] = []
    peak = {"busy": 0, "now": 0}
    release = asyncio.Event()

    async def statement(tenant: UUID, name: str) -> None:
        async with gate.hold(tenant):
            inside.append(name)
            if tenant == busy:
                peak["now"] += 1
                peak["busy"] = max(peak["busy"], peak["now"])
                await release.wait()
                peak["now"] -= 1

    tasks = [asyncio.create_task(statement(busy, f"busy-{i}")) for i in range(4)]
    others = [asyncio.create_task(statement(uuid4(), f"other-{i}")) for i in range(3)]
    await asyncio.gather(*others)
    # Every other tenant got through while the busy tenant's first statements still run.
    assert inside == [f"busy-{i}" for i in range(width)] + ["other-0", "other-1", "other-2"]
    release.set()
    await asyncio.gather(*tasks)
    assert inside[width + 3 :] == [f"busy-{i}" for i in range(width, 4)]
    assert peak["busy"] == width
    assert len(gate) == 0


async def test_a_statement_that_fails_or_is_cancelled_gives_the_turn_back() -> None:
    gate = WalletGate(width=1)
    tenant = uuid4()

    async def failing() -> None:
        async with gate.hold(tenant):
            raise RuntimeError("statement failed")

    with pytest.raises(RuntimeError):
        await failing()
    started = asyncio.Event()

    async def slow() -> None:
        async with gate.hold(tenant):
            started.set()
            await asyncio.Event().wait()  # holds the turn until cancelled

    task = asyncio.create_task(slow())
    await started.wait()
    waiter = asyncio.create_task(asyncio.wait_for(_enter(gate, tenant), timeout=10))
    task.cancel()
    await waiter
    assert len(gate) == 0


async def _enter(gate: WalletGate, tenant: UUID) -> None:
    async with gate.hold(tenant):
        pass
