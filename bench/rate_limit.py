"""What the shared per-key rate limit costs a request: the statement of db/rate_limits.py against `SELECT 1`.

An authenticated request takes from its key's bucket in PostgreSQL (one INSERT ... ON CONFLICT DO
UPDATE; a refused request reads the bucket once more for Retry-After), or spends a lease its
process took earlier in that statement (keys of 120 or more a minute). This runs, on
an embedded PostgreSQL in a temporary folder, `--clients` closed-loop clients each making `--calls`
calls through the gateway's pool, and prints one table:

* `SELECT 1`: the bare round trip through the pool, the floor any statement pays;
* take, one key: every client on one key, so every call waits for the same row's lock;
* take, a key per client: no two clients share a row;
* rate_check, a key per client: KeyAuthenticator.rate_check as the guard calls it, for a key whose
  limit gives leases of 50 (one statement per 50 calls). A key under 120 a minute costs what
  "take, a key per client" costs: one statement per call.

Then the same with one client, where the latency is the round trip alone. CPU ms/call is this
process's and the PostgreSQL backends' CPU time over the calls made.

    .venv/bin/python bench/rate_limit.py
    .venv/bin/python bench/rate_limit.py --clients 16 --calls 2000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from uuid import UUID, uuid4

ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__":
    sys.path[:] = [str(ROOT), *(p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent)]

from bench.wallet import _backend_ticks  # noqa: E402
from gateway.auth.keys import KeyAuthenticator, Principal  # noqa: E402
from gateway.db import rate_limits  # noqa: E402
from gateway.db.embedded import start_embedded  # noqa: E402
from gateway.db.migrations import apply_migrations  # noqa: E402
from gateway.db.pool import Pool, create_pool  # noqa: E402

# High enough that nothing is refused: the bench measures the allowed path every request takes.
LIMIT = 10_000_000
CLOCK_TICKS = 100  # os.sysconf("SC_CLK_TCK") on Linux

Call = Callable[[int], Awaitable[object]]


async def run(clients: int, calls: int, call: Call, pgdata: Path) -> tuple[float, float, float, float]:
    """(calls/s, p50 µs, p99 µs, CPU ms/call of this process and the backends)."""
    latencies: list[float] = []

    async def client(index: int) -> None:
        for _ in range(calls):
            started = time.perf_counter()
            await call(index)
            latencies.append(time.perf_counter() - started)

    cpu, ticks = time.process_time(), _backend_ticks(pgdata)
    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    wall = time.perf_counter() - started
    used = time.process_time() - cpu + (_backend_ticks(pgdata) - ticks) / CLOCK_TICKS
    cuts = statistics.quantiles(latencies, n=100)
    return len(latencies) / wall, cuts[49] * 1e6, cuts[98] * 1e6, used * 1000 / len(latencies)


def modes(pool: Pool, keys: list[UUID], auth: KeyAuthenticator) -> dict[str, Call]:
    interval = 60.0 / LIMIT
    principals = [Principal("tenant", k, uuid4(), frozenset(), LIMIT) for k in keys]

    async def select_1(_: int) -> None:
        async with pool.acquire() as conn:
            await conn.fetchval("SELECT 1")

    async def take_one_key(_: int) -> None:
        async with pool.acquire() as conn:
            await rate_limits.take(conn, keys[0], interval, 60.0)

    async def take_own_key(i: int) -> None:
        async with pool.acquire() as conn:
            await rate_limits.take(conn, keys[i], interval, 60.0)

    async def rate_check(i: int) -> None:
        allowed, _, _ = await auth.rate_check(principals[i])
        assert allowed

    return {
        "SELECT 1": select_1,
        "take, one key": take_one_key,
        "take, a key per client": take_own_key,
        "rate_check, a key per client": rate_check,
    }


async def main(args: argparse.Namespace) -> None:
    (ROOT / ".bench").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-rate-", dir=ROOT / ".bench") as tmp:
        embedded = start_embedded(Path(tmp))
        try:
            size = args.clients
            pool = await create_pool(embedded.uri, min_size=size, max_size=size, statement_cache_size=100)
            try:
                async with pool.acquire() as conn:
                    await apply_migrations(conn)
                keys = [uuid4() for _ in range(args.clients)]
                auth = KeyAuthenticator(pool, ttl_s=2.0)
                print(f"{'mode':<32} | clients |  calls/s |  p50 µs |  p99 µs | CPU ms/call")
                print(f"{'-' * 32}-|---------|----------|---------|---------|------------")
                for clients in (args.clients, 1):
                    for name, call in modes(pool, keys, auth).items():
                        await run(clients, args.calls // 10, call, embedded.pgdata)  # warm-up
                        rate, p50, p99, cpu = await run(clients, args.calls, call, embedded.pgdata)
                        print(f"{name:<32} | {clients:>7} | {rate:>8.0f} | {p50:>7.0f} | {p99:>7.0f} | {cpu:>11.3f}")
            finally:
                await pool.close()
        finally:
            embedded.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--calls", type=int, default=1000, help="calls per client")
    asyncio.run(main(parser.parse_args()))
