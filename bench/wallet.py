"""PostgreSQL's CPU per billed request: admission and settlement of one sync job, with and without the wallet gate.

No HTTP and no engine: each request runs what the gateway runs against PostgreSQL for a sync
text-to-image job (`admit`, `settle_run`, and the job view a client reads back) through the real
functions and the real pool, on an embedded PostgreSQL in a temporary folder. `--concurrency` tasks each
loop over requests. Either every task bills the same tenant (every statement wants the same wallet row)
or each bills its own tenant. The CPU is that of the PostgreSQL backends, read from /proc, and of this
process (the client side: asyncpg and the billing code), divided by the requests. Variants run in
turns within each round; the table gives the median of the rounds.

    .venv/bin/python bench/wallet.py
    .venv/bin/python bench/wallet.py --concurrency 16 --requests 3000 --rounds 3 --pg-option synchronous_commit=off
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from uuid import UUID, uuid4

ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__":
    sys.path[:] = [str(ROOT), *(p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent)]

from gateway.api.views import load_job_view  # noqa: E402
from gateway.auth.keys import Principal  # noqa: E402
from gateway.auth.service import KeySpec, create_tenant, create_tenant_key  # noqa: E402
from gateway.billing.admission import JobRequest, PriceCache, admit  # noqa: E402
from gateway.billing.batching import SettlementBatcher  # noqa: E402
from gateway.billing.gate import WalletGate  # noqa: E402
from gateway.billing.settlement import Outcome, StoredImage, settle_run, settlement_args  # noqa: E402
from gateway.db.embedded import start_embedded  # noqa: E402
from gateway.db.migrations import apply_migrations  # noqa: E402
from gateway.db.pool import Pool, create_pool  # noqa: E402
from gateway.domain.generation import EngineAttempt  # noqa: E402


def _backend_ticks(pgdata: Path) -> int:
    """utime + stime of every PostgreSQL backend serving a client (not the background processes)."""
    total = 0
    postmaster = (pgdata / "postmaster.pid").read_text().split()[0]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if fields[1] == postmaster and b"[local]" in cmdline:
            total += int(fields[11]) + int(fields[12])
    return total


async def _tenant(pool: Pool, name: str) -> Principal:
    async with pool.acquire() as conn, conn.transaction():
        tenant_id, _ = await create_tenant(conn, name=name, credits=10**12, max_concurrent_jobs=10**6)
        await create_tenant_key(conn, tenant_id=tenant_id, spec=KeySpec(name="bench", scopes=["generate"]))
        key_id = await conn.fetchval("SELECT id FROM api_keys WHERE tenant_id = $1", tenant_id)
    return Principal(
        kind="tenant", key_id=key_id, tenant_id=tenant_id, scopes=frozenset({"generate"}), rate_limit_per_minute=10**9
    )


def _job(job_id: UUID) -> JobRequest:
    return JobRequest(
        job_id=job_id,
        operation="text-to-image",
        params={"prompt": "a lighthouse on a cliff at dusk", "width": 512, "height": 512, "n": 1},
        width=512,
        height=512,
        steps=30,
        n=1,
        model=None,
        allowed_engines=None,
        password_hash=None,
        webhook_url=None,
        inputs=[],
        deadline_s=600,
        lease_owner="bench",
        lease_s=30,
    )


async def one_request(
    pool: Pool,
    prices: PriceCache,
    principal: Principal,
    gate: WalletGate | None,
    batcher: SettlementBatcher | None = None,
    steps: list[tuple[float, float]] | None = None,
) -> None:
    """What a sync text-to-image request asks of PostgreSQL: admission, settlement, and a read of
    the job view, as a client's GET /v1/jobs/{id} would cost. With `batcher` (on the same gate), the
    settlement goes through it as the runner's does: it waits for the gate itself and settles the
    tenant's waiting ones together. `steps` gets the wall time of the admission and the settlement,
    waits included (with one request in flight, their round trips)."""
    assert principal.tenant_id is not None
    tenant = principal.tenant_id

    def turn() -> AbstractAsyncContextManager[None]:
        return gate.hold(tenant) if gate is not None else nullcontext()

    job_id = uuid4()
    started = time.perf_counter()
    async with turn():
        admission = await admit(pool, principal, _job(job_id), prices=prices)
    admitted = time.perf_counter()
    image = StoredImage(0, uuid4().hex, f"outputs/{job_id}/r-0.png", "image/png", 1000, "e" * 32, "x.png", 1)
    outcome = Outcome(
        state="succeeded",
        engine="qolaba",
        images=[image],
        attempts=[EngineAttempt(engine="qolaba", outcome="succeeded", latency_ms=3, images=1)],
    )
    if batcher is not None:
        args = settlement_args(job_id, admission.unit_price, 1, outcome, file_ttl_s=3600, unless_canceled=True)
        await batcher.settle(tenant, args)
    else:
        async with turn():
            await settle_run(pool, job_id, admission.unit_price, 1, outcome, file_ttl_s=3600, unless_canceled=True)
    if steps is not None:
        steps.append((admitted - started, time.perf_counter() - admitted))
    async with pool.acquire() as conn:
        await load_job_view(conn, job_id, tenant)


@asynccontextmanager
async def database(pg_options: list[str]) -> AsyncIterator[tuple[str, Path]]:
    with tempfile.TemporaryDirectory(prefix="bench-wallet-", dir=ROOT / ".bench") as tmp:
        embedded = start_embedded(Path(tmp))
        try:
            options = urlencode([(name, value) for name, _, value in (o.partition("=") for o in pg_options)])
            yield embedded.uri + (("&" if "?" in embedded.uri else "?") + options if options else ""), embedded.pgdata
        finally:
            embedded.stop()


async def main(args: argparse.Namespace) -> None:
    (ROOT / ".bench").mkdir(exist_ok=True)
    async with database(args.pg_option) as (dsn, pgdata):
        pool = await create_pool(dsn, min_size=args.concurrency, max_size=args.concurrency, statement_cache_size=100)
        try:
            async with pool.acquire() as conn:
                await apply_migrations(conn)
            prices = PriceCache()
            hot = await _tenant(pool, "hot")
            own = [await _tenant(pool, f"tenant-{i}") for i in range(args.concurrency)]
            variants: list[tuple[str, list[Principal], int | None, bool]] = [
                ("one tenant, no gate", [hot], None, False),
                ("one tenant, gate of 2", [hot], 2, False),
                ("one tenant, gate of 1", [hot], 1, False),
                ("one tenant, gate of 1, settlements batched", [hot], 1, True),
                (f"{args.concurrency} tenants, gate of 2", own, 2, False),
            ]
            for _ in range(200):  # warm the statement cache and the price cache
                await one_request(pool, prices, hot, None)
            figures: dict[str, list[tuple[float, ...]]] = {name: [] for name, *_ in variants}
            each = args.requests // args.concurrency
            for _ in range(args.rounds):
                for name, principals, width, batched in variants:
                    gate = WalletGate(width) if width else None
                    batcher = SettlementBatcher(pool, gate) if batched and gate is not None else None

                    steps: list[tuple[float, float]] = []

                    async def worker(
                        i: int,
                        principals: list[Principal] = principals,
                        gate: Any = gate,
                        batcher: Any = batcher,
                        steps: list[tuple[float, float]] = steps,
                    ) -> None:
                        for _ in range(each):
                            await one_request(pool, prices, principals[i % len(principals)], gate, batcher, steps)

                    ticks, started, client = _backend_ticks(pgdata), time.perf_counter(), time.process_time()
                    await asyncio.gather(*(worker(i) for i in range(args.concurrency)))
                    elapsed, used = time.perf_counter() - started, _backend_ticks(pgdata) - ticks
                    done = each * args.concurrency
                    figures[name].append(
                        (
                            1e6 * used / os.sysconf("SC_CLK_TCK") / done,
                            1e6 * (time.process_time() - client) / done,
                            done / elapsed,
                            1e6 * statistics.median(a for a, _ in steps),
                            1e6 * statistics.median(b for _, b in steps),
                        )
                    )
        finally:
            await pool.close()
    print(f"\n{args.concurrency} requests in flight, {each * args.concurrency} a round, median of {args.rounds} rounds")
    if args.pg_option:
        print(f"PostgreSQL settings: {', '.join(args.pg_option)}")
    print()
    print(
        "| variant | PostgreSQL CPU µs/request | client (asyncpg + Python) CPU µs/request | requests/s "
        "| admission µs p50 | settlement µs p50 |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, runs in figures.items():
        cpu, client, rate, admission, settlement = (statistics.median(r[i] for r in runs) for i in range(5))
        print(f"| {name} | {cpu:,.0f} | {client:,.0f} | {rate:,.0f} | {admission:,.0f} | {settlement:,.0f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--requests", type=int, default=2400, help="requests per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pg-option", action="append", default=[], metavar="NAME=VALUE", help="session setting")
    import uvloop

    uvloop.run(main(parser.parse_args()))
