"""How the gateway's costs grow with history: the same operations at 10^5, 10^6 (and 10^7) finished jobs.

One run starts the fake engine (bench/gateway.py's), an embedded PostgreSQL and `gateway serve`, makes
1,000 tenants (tenant 0 has a real key and 10 % of the jobs; the rest share the others evenly), then,
for each size in turn, replaces the history with that many finished jobs spread over the last 91 days,
written server-side in bulk (INSERT ... SELECT over generate_series, not the API): their results,
attempts, files, reservations, ledger charges (after one top-up per tenant, so `balance_after` runs
are true), the daily usage rollups, and idempotency keys for the last two days. Files older than two
days already have their blob swept (as a running sweeper would have left them); the day before
that has real blobs in the folder store, which the measured sweep deletes, along with the jobs of
the oldest day (past `jobs_days` = 90) and the idempotency keys past their 24 h TTL.

After VACUUM ANALYZE (what autovacuum would have done to a table this old), each size measures:

* sync text-to-image through the gateway (admission, fake engine, blob write, settlement):
  `--concurrency` clients for `--duration` s, p50/p99 and requests per second;
* GET /v1/jobs first page and 50th page (cursor), GET /v1/usage (30 days), GET /v1/ledger,
  the dashboard overview page, GET /v1/admin/usage (30 days, by tenant): median of `--repeat`;
* `gateway billing audit`'s checks (run_audit), once;
* one retention sweep (gateway/worker/retention.py) over that day of expired data;
* the size on disk of each table (with its indexes and TOAST).

    .venv/bin/python bench/scale.py                       # 10^5 and 10^6
    .venv/bin/python bench/scale.py --sizes 100000,1000000,10000000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__":
    # Run as a script, this folder comes first on sys.path and `import gateway` would find bench/gateway.py.
    sys.path[:] = [str(ROOT), *(p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent)]

import httpx  # noqa: E402
import msgspec  # noqa: E402

from bench.gateway import ENGINE_KEY, GATEWAY_BODY, client, free_port, stop, wait_http  # noqa: E402

TENANTS = 1000
DAYS = 91  # the oldest day is past jobs_days = 90
TABLES = (
    "jobs",
    "job_results",
    "job_attempts",
    "files",
    "reservations",
    "ledger_entries",
    "usage_daily",
    "idempotency_keys",
)

SETUP_TENANTS = """
CREATE TABLE IF NOT EXISTS bench_tenants (idx integer PRIMARY KEY, tenant_id uuid NOT NULL, key_id uuid NOT NULL);
INSERT INTO tenants (id, name, webhook_secret, max_concurrent_jobs)
SELECT ('00000000-0000-0000-0000-' || lpad(to_hex(i), 12, '0'))::uuid, 'scale-' || i, 'whsec_x', 1000
FROM generate_series(1, $n - 1) AS i;
INSERT INTO wallets (tenant_id) SELECT id FROM tenants WHERE name LIKE 'scale-%';
INSERT INTO api_keys (id, tenant_id, name, scopes)
SELECT ('00000000-0000-0001-0000-' || right(id::text, 12))::uuid, id, 'main', '{generate}' FROM tenants
WHERE name LIKE 'scale-%';
INSERT INTO bench_tenants
SELECT substr(t.name, 7)::int, t.id, k.id FROM tenants t JOIN api_keys k ON k.tenant_id = t.id
WHERE t.name LIKE 'scale-%';
"""

# $N: how many jobs. Tenant 0 (the measured one, with a real key) gets every tenth job.
FILL = """
TRUNCATE job_results, job_attempts, files, job_inputs, idempotency_keys, webhook_outbox, jobs, reservations,
         ledger_entries, usage_daily;
UPDATE wallets SET balance = 0, held = 0, active_jobs = 0;
INSERT INTO ledger_entries (tenant_id, kind, amount, balance_after, reason, created_at)
SELECT tenant_id, 'topup', 1000000000000, 1000000000000, 'scale bench', now() - interval '92 days'
FROM bench_tenants ORDER BY idx;

INSERT INTO jobs (id, tenant_id, api_key_id, operation, state, params, n, unit_price, price_version_id, engine,
                  images_succeeded, charged, runs, deadline_at, created_at, started_at, finished_at, updated_at)
SELECT gen_random_uuid(), t.tenant_id, t.key_id, 'text-to-image', s.state,
       '{"prompt": "a lighthouse on a cliff at dusk, oil painting", "width": 512, "height": 512}'::jsonb,
       1, 400, 1, 'qolaba', CASE WHEN s.state = 'succeeded' THEN 1 ELSE 0 END,
       CASE WHEN s.state = 'succeeded' THEN 400 ELSE 0 END, 1,
       c.at + interval '10 minutes', c.at, c.at, c.at + interval '2 s', c.at + interval '2 s'
FROM generate_series(1, $N) AS i
JOIN bench_tenants t ON t.idx = CASE WHEN i % 10 = 0 THEN 0 ELSE 1 + (i * 7) % 999 END
CROSS JOIN LATERAL (SELECT CASE WHEN i % 10 = 3 THEN 'failed' ELSE 'succeeded' END AS state) s
CROSS JOIN LATERAL (SELECT now() - interval '91 days' * (1 - (i - 0.5) / $N) AS at) c
ORDER BY i;

INSERT INTO job_results (job_id, index, status, file_id, seed)
SELECT id, 0, state, CASE WHEN state = 'succeeded' THEN md5(id::text) END, 7 FROM jobs ORDER BY created_at;

INSERT INTO job_attempts (job_id, engine, outcome, latency_ms, images, created_at)
SELECT id, 'qolaba', CASE WHEN state = 'succeeded' THEN 'succeeded' ELSE 'failed' END, 800, images_succeeded,
       finished_at FROM jobs ORDER BY created_at;

INSERT INTO files (id, tenant_id, job_id, kind, blob_key, content_type, size, etag, filename, expires_at,
                   blob_deleted_at, created_at)
SELECT md5(id::text), tenant_id, id, 'image', 'outputs/' || id || '/r-0.png', 'image/png', 60000,
       left(md5(id::text || 'e'), 32), id || '-0.png', finished_at + interval '1 day',
       CASE WHEN finished_at + interval '1 day' < now() - interval '1 day' THEN finished_at + interval '25 hours' END,
       finished_at
FROM jobs WHERE state = 'succeeded' ORDER BY created_at;

INSERT INTO reservations (job_id, tenant_id, api_key_id, amount, state, charged, released, created_at, closed_at)
SELECT id, tenant_id, api_key_id, 400, CASE WHEN state = 'succeeded' THEN 'settled' ELSE 'released' END,
       charged, 400 - charged, created_at, finished_at
FROM jobs ORDER BY created_at;

INSERT INTO ledger_entries (tenant_id, kind, amount, balance_after, job_id, api_key_id, reason, created_at)
SELECT tenant_id, 'charge', -charged,
       1000000000000 - sum(charged) OVER (PARTITION BY tenant_id ORDER BY finished_at, id),
       id, api_key_id, 'images produced', finished_at
FROM jobs WHERE state = 'succeeded' ORDER BY finished_at, id;

INSERT INTO usage_daily (tenant_id, day, operation, engine, api_key_id, jobs, images, failed_images, charged)
SELECT tenant_id, (finished_at AT TIME ZONE 'UTC')::date, operation, engine, api_key_id, count(*),
       sum(images_succeeded), count(*) FILTER (WHERE state = 'failed'), sum(charged)
FROM jobs GROUP BY 1, 2, 3, 4, 5;

INSERT INTO idempotency_keys (tenant_id, key, request_hash, job_id, created_at)
SELECT tenant_id, 'order-' || id, '\\x00'::bytea, id, created_at
FROM jobs WHERE created_at > now() - interval '2 days' AND (hashtext(id::text) % 4) = 0;

UPDATE wallets w SET balance = l.total FROM (
    SELECT tenant_id, sum(amount) AS total FROM ledger_entries GROUP BY tenant_id) l
WHERE l.tenant_id = w.tenant_id;
"""


def sql(text: str, **values: int) -> str:
    for name, value in values.items():
        text = text.replace(f"${name}", str(value))
    return text


class Row(msgspec.Struct):
    size: int
    fill_s: float = 0.0
    sync_p50_ms: float = 0.0
    sync_p99_ms: float = 0.0
    sync_rps: float = 0.0
    timings_ms: dict[str, float] = msgspec.field(default_factory=dict)
    sql_ms: dict[str, float] = msgspec.field(default_factory=dict)
    audit_s: float = 0.0
    audit_clean: bool = False
    sweep_s: float = 0.0
    sweep_sync_p50_ms: float = 0.0
    sweep_sync_p99_ms: float = 0.0
    swept: dict[str, int] = msgspec.field(default_factory=dict)
    sizes_mb: dict[str, float] = msgspec.field(default_factory=dict)
    database_mb: float = 0.0


async def setup(dsn: str) -> tuple[str, str]:
    """The measured tenant (a real key, index 0), 999 more by SQL, and an operator key."""
    from gateway.auth.commands import create_admin_key_cmd  # noqa: PLC0415
    from gateway.auth.service import KeySpec, create_tenant, create_tenant_key  # noqa: PLC0415
    from gateway.db.migrations import apply_migrations  # noqa: PLC0415
    from gateway.db.pool import create_pool  # noqa: PLC0415

    pool = await create_pool(dsn, min_size=1, max_size=2, statement_cache_size=100)
    try:
        async with pool.acquire() as conn:
            await apply_migrations(conn)
            async with conn.transaction():
                tenant_id, _ = await create_tenant(conn, name="measured", credits=0, max_concurrent_jobs=100_000)
                key = await create_tenant_key(
                    conn,
                    tenant_id=tenant_id,
                    spec=KeySpec(
                        name="bench",
                        scopes=["generate", "jobs:read", "usage:read", "files:read"],
                        rate_limit_per_minute=10**9,
                    ),
                )
                await conn.execute(sql(SETUP_TENANTS, n=TENANTS))
                await conn.execute("INSERT INTO bench_tenants VALUES (0, $1, $2)", tenant_id, key.id)
        operator = await create_admin_key_cmd(pool)
    finally:
        await pool.close()
    return key.key, operator["key"]


async def fill(dsn: str, size: int, blobs: Path) -> float:
    import asyncpg  # noqa: PLC0415

    from gateway.storage.filesystem import FilesystemBlobStore  # noqa: PLC0415

    started = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql(FILL, N=size))
        # The day of expired files whose blobs the sweep will delete: real files in the folder store.
        keys = await conn.fetch("SELECT blob_key FROM files WHERE blob_deleted_at IS NULL AND expires_at < now()")
        store = FilesystemBlobStore(blobs)
        png = b"\x89PNG" + b"\0" * 60
        for row in keys:
            await store.put(row[0], png, "image/png")
        await conn.execute("VACUUM ANALYZE")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
    return time.perf_counter() - started


async def median_ms(call: Callable[[], Awaitable[None]], repeat: int) -> float:
    await call()  # warm: caches, prepared statements
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        await call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


async def reads(url: str, key: str, operator: str, repeat: int) -> dict[str, float]:
    tenant = {"Authorization": f"Bearer {key}"}
    admin = {"Authorization": f"Bearer {operator}"}
    out: dict[str, float] = {}
    async with httpx.AsyncClient(base_url=url, timeout=300) as http:

        def get(
            path: str, headers: dict[str, str], params: dict[str, str] | None = None
        ) -> Callable[[], Awaitable[None]]:
            async def call() -> None:
                response = await http.get(path, headers=headers, params=params)
                assert response.status_code == 200, (path, response.status_code, response.text[:200])

            return call

        out["jobs page 1"] = await median_ms(get("/v1/jobs", tenant), repeat)
        cursor: str | None = None
        for _ in range(49):
            page = (await http.get("/v1/jobs", headers=tenant, params={"cursor": cursor} if cursor else None)).json()
            cursor = page["next_cursor"]
        assert cursor is not None, "the measured tenant has fewer than 50 pages of jobs"
        out["jobs page 50"] = await median_ms(get("/v1/jobs", tenant, {"cursor": cursor}), repeat)
        out["usage 30 d"] = await median_ms(get("/v1/usage", tenant), repeat)
        out["ledger"] = await median_ms(get("/v1/ledger", tenant), repeat)
        out["admin usage"] = await median_ms(get("/v1/admin/usage", admin), repeat)
        # The dashboard: sign in as a browser does (CSRF cookie from the form), then the overview page.
        form = await http.get("/dashboard/sign-in")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert token is not None, form.text[:300]
        signed = await http.post("/dashboard/sign-in", data={"csrf_token": token.group(1), "key": key})
        assert signed.status_code in (200, 303), signed.status_code
        out["dashboard overview"] = await median_ms(get("/dashboard/overview", {}), repeat)
    return out


async def sync_load(
    url: str, key: str, concurrency: int, duration: float, until: asyncio.Event | None = None
) -> tuple[float, float, float]:
    """Closed-loop sync text-to-image for `duration` s after 1 s of warm-up, or until `until` is set."""
    body = msgspec.json.encode(GATEWAY_BODY)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    latencies: list[float] = []
    started = time.perf_counter()
    warm_until = started + (0.0 if until else 1.0)
    end = warm_until + duration

    def running(now: float) -> bool:
        return not until.is_set() if until else now < end

    async with client(concurrency) as http:

        async def worker() -> None:
            while running(t0 := time.perf_counter()):
                response = await http.post(f"{url}/v1/text-to-image", content=body, headers=headers)
                assert response.status_code == 200, response.text[:200]
                if t0 >= warm_until:
                    latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - warm_until
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return statistics.median(latencies) * 1000, p99 * 1000, len(latencies) / elapsed


async def sql_reads(dsn: str, repeat: int) -> dict[str, float]:
    """The same reads' queries straight on PostgreSQL (the gateway's own functions, no HTTP), to tell
    what the database's cost does with n from what the gateway process and a busy VM add."""
    from datetime import UTC, datetime, timedelta  # noqa: PLC0415

    from gateway.api.usage import usage_rows  # noqa: PLC0415
    from gateway.db import billing as bq  # noqa: PLC0415
    from gateway.db import jobs as jq  # noqa: PLC0415
    from gateway.db.pool import create_pool  # noqa: PLC0415

    today = datetime.now(UTC).date()
    month_ago = today - timedelta(days=30)
    pool = await create_pool(dsn, min_size=1, max_size=1, statement_cache_size=100)
    try:
        async with pool.acquire() as conn:
            tenant = await conn.fetchval("SELECT tenant_id FROM bench_tenants WHERE idx = 0")

            def run(query: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[None]]:
                async def call() -> None:
                    await query()

                return call

            return {
                "jobs page 1": await median_ms(
                    run(lambda: jq.list_jobs(conn, tenant, before=None, state=None, operation=None, limit=21)), repeat
                ),
                "usage 30 d": await median_ms(run(lambda: usage_rows(conn, tenant, month_ago, today, ["day"])), repeat),
                "ledger": await median_ms(run(lambda: bq.ledger_page(conn, tenant, None, 51)), repeat),
                "admin usage": await median_ms(
                    run(
                        lambda: bq.usage_report(
                            conn, start=month_ago, end=today, group_by=["tenant"], tenant_id=None, unit_costs={}
                        )
                    ),
                    repeat,
                ),
            }
    finally:
        await pool.close()


async def audit_and_sweep(url: str, key: str, concurrency: int, dsn: str, blobs: Path, row: Row) -> None:
    from gateway.config import load_settings  # noqa: PLC0415
    from gateway.db.audit import run_audit  # noqa: PLC0415
    from gateway.db.pool import create_pool  # noqa: PLC0415
    from gateway.storage.filesystem import FilesystemBlobStore  # noqa: PLC0415
    from gateway.worker.retention import RetentionSweeper  # noqa: PLC0415

    pool = await create_pool(dsn, min_size=1, max_size=4, statement_cache_size=100)
    try:
        async with pool.acquire() as conn:
            t0 = time.perf_counter()
            problems = await run_audit(conn)
            row.audit_s = time.perf_counter() - t0
            row.audit_clean = not problems
        settings = load_settings({}, overrides={"database_url": dsn})
        sweeper = RetentionSweeper(pool=pool, blobs=FilesystemBlobStore(blobs), settings=settings)
        # The sweep runs while sync requests keep coming, as it would in production: their latency
        # meanwhile shows what the sweeper's deletes cost the hot path.
        swept = asyncio.Event()

        async def sweep() -> Any:
            try:
                return await sweeper.sweep()
            finally:
                swept.set()

        report, during = await asyncio.gather(sweep(), sync_load(url, key, concurrency, 0.0, until=swept))
        row.sweep_sync_p50_ms, row.sweep_sync_p99_ms, _ = during
        row.sweep_s = report.seconds
        row.swept = {k: getattr(report, k) for k in ("output_blobs", "jobs", "idempotency_keys") if getattr(report, k)}
        async with pool.acquire() as conn:
            for table in TABLES:
                row.sizes_mb[table] = await conn.fetchval("SELECT pg_total_relation_size($1::regclass)", table) / 2**20
            row.database_mb = await conn.fetchval("SELECT pg_database_size(current_database())") / 2**20
            after = await run_audit(conn)
            row.audit_clean = row.audit_clean and not after
    finally:
        await pool.close()


def table(rows: list[Row]) -> str:
    def col(values: list[str]) -> str:
        return " | ".join(values)

    header = ["", *(f"{r.size:,} jobs" for r in rows)]
    lines = [f"| {col(header)} |", "|" + " --- |" * len(header)]

    def add(name: str, values: list[str]) -> None:
        lines.append(f"| {col([name, *values])} |")

    add("fill (s)", [f"{r.fill_s:.0f}" for r in rows])
    add("sync text-to-image p50 / p99 (ms)", [f"{r.sync_p50_ms:.1f} / {r.sync_p99_ms:.1f}" for r in rows])
    add("sync text-to-image (req/s)", [f"{r.sync_rps:.0f}" for r in rows])
    for name in rows[0].timings_ms:
        add(f"GET {name} (ms, median)", [f"{r.timings_ms[name]:.1f}" for r in rows])
    for name in rows[0].sql_ms:
        add(f"  its SQL alone: {name} (ms, median)", [f"{r.sql_ms[name]:.2f}" for r in rows])
    add("billing audit (s)", [f"{r.audit_s:.2f}{'' if r.audit_clean else ' FAILED'}" for r in rows])
    add("retention sweep of one day (s)", [f"{r.sweep_s:.2f}" for r in rows])
    add("  swept", [", ".join(f"{v:,} {k}" for k, v in r.swept.items()) for r in rows])
    add(
        "  sync p50 / p99 during the sweep (ms)",
        [f"{r.sweep_sync_p50_ms:.1f} / {r.sweep_sync_p99_ms:.1f}" for r in rows],
    )
    for name in TABLES:
        add(f"{name} (MB)", [f"{r.sizes_mb[name]:.0f}" for r in rows])
    add("database (MB)", [f"{r.database_mb:.0f}" for r in rows])
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000", help="job counts, comma-separated")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of sync load per size")
    parser.add_argument("--repeat", type=int, default=15, help="timed repeats of each read")
    parser.add_argument("--tmp-dir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    from gateway.db.embedded import start_embedded  # noqa: PLC0415

    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=args.tmp_dir))
    procs: list[subprocess.Popen[bytes]] = []
    embedded = None
    rows: list[Row] = []
    try:
        engine_port = free_port()
        engine_url = f"http://127.0.0.1:{engine_port}"
        procs.append(
            subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "gateway.py"), "--serve-fake-engine", str(engine_port)]
            )
        )
        embedded = start_embedded(tmp / "data")
        dsn = embedded.uri
        blobs = tmp / "blobs"
        key, operator = asyncio.run(setup(dsn))
        config = tmp / "gateway.toml"
        config.write_text(
            f'[engines.qolaba]\nkind = "qolaba"\nbase_url = "{engine_url}"\napi_key_env = "BENCH_ENGINE_KEY"\n'
            f'max_concurrency = 4096\n\n[routes]\ntext-to-image = ["qolaba"]\n\n[storage]\npath = "{blobs}"\n\n'
            "[retention]\nenabled = false\n"
        )
        port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "GATEWAY_CONFIG": str(config),
            "GATEWAY_DATABASE_URL": dsn,
            "GATEWAY_DATA_DIR": str(tmp / "data"),
            "GATEWAY_LOG_LEVEL": "warning",
            "GATEWAY_DEMO_TENANT": "false",
            "BENCH_ENGINE_KEY": ENGINE_KEY,
        }
        serve = ["serve", "--host", "127.0.0.1", "--port", str(port)]
        gateway = subprocess.Popen([sys.executable, "-m", "gateway.cli", *serve], env=env)
        procs.append(gateway)
        wait_http(f"{engine_url}/", proc=procs[0])
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/healthz", proc=gateway)
        for size in sizes:
            row = Row(size=size)
            print(f"filling {size:,} jobs ...", flush=True)
            row.fill_s = asyncio.run(fill(dsn, size, blobs))
            print(f"  filled in {row.fill_s:.0f} s; measuring", flush=True)
            row.sync_p50_ms, row.sync_p99_ms, row.sync_rps = asyncio.run(
                sync_load(url, key, args.concurrency, args.duration)
            )
            row.timings_ms = asyncio.run(reads(url, key, operator, args.repeat))
            row.sql_ms = asyncio.run(sql_reads(dsn, args.repeat))
            asyncio.run(audit_and_sweep(url, key, args.concurrency, dsn, blobs, row))
            rows.append(row)
            print(table(rows), flush=True)
    finally:
        for proc in reversed(procs):
            stop(proc)
        if embedded is not None:
            embedded.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n" + table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
