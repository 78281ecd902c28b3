"""A soak run: the blob folder stops growing once the retention sweeper keeps up.

Starts the fake engine (bench/gateway.py's), an embedded PostgreSQL and `gateway serve` with a
short `file_ttl_s` and sweep `interval_s`, sends sync text-to-image requests for `--duration`
seconds, and every `--every` seconds prints the blob folder's size and file count, the files whose
blob is still stored, and what the sweeper has counted in /metrics. With a steady request rate the
folder grows for about `file_ttl_s + interval_s`, then stays flat. (Input blobs are not exercised
here: the fake engine is Qolaba's, which fetches inputs by URL, and the folder store signs none;
tests/e2e/test_retention.py covers them.)

    .venv/bin/python bench/retention_soak.py --duration 240 --ttl 30 --interval 10
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__":
    # Run as a script, this folder comes first on sys.path and `import gateway` would find bench/gateway.py.
    sys.path[:] = [str(ROOT), *(p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent)]

import httpx  # noqa: E402
import msgspec  # noqa: E402

from bench.gateway import ENGINE_KEY, GATEWAY_BODY, client, create_tenants, free_port, stop, wait_http  # noqa: E402


def folder(path: Path) -> tuple[int, int]:
    """(bytes, files) under `path`."""
    size = count = 0
    for root, _, names in os.walk(path):
        for name in names:
            try:
                size += os.stat(os.path.join(root, name)).st_size
                count += 1
            except FileNotFoundError:  # swept while we looked
                continue
    return size, count


async def load(url: str, key: str, stop_at: float, concurrency: int) -> int:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    body = msgspec.json.encode(GATEWAY_BODY)
    done = 0
    async with client(concurrency) as http:

        async def worker() -> None:
            nonlocal done
            while time.monotonic() < stop_at:
                response = await http.post(f"{url}/v1/text-to-image", content=body, headers=headers)
                assert response.status_code == 200, response.text[:300]
                done += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


async def watch(url: str, blobs: Path, dsn: str, stop_at: float, every: float) -> None:
    import asyncpg  # noqa: PLC0415

    conn = await asyncpg.connect(dsn)
    started = time.monotonic()
    print("| s | blob MB | blob files | files with a stored blob (db) | jobs (db) | output blobs swept |")
    print("| --- | --- | --- | --- | --- | --- |")
    try:
        async with httpx.AsyncClient(base_url=url) as http:
            while True:
                size, count = folder(blobs)
                stored = await conn.fetchval("SELECT count(*) FROM files WHERE blob_deleted_at IS NULL")
                jobs = await conn.fetchval("SELECT count(*) FROM jobs")
                metrics = (await http.get("/metrics")).text

                def swept(kind: str, text: str = metrics) -> int:
                    found = re.search(rf'gateway_retention_swept_total\{{kind="{kind}"\}} ([0-9.e+]+)', text)
                    return int(float(found.group(1))) if found else 0

                print(
                    f"| {time.monotonic() - started:.0f} | {size / 2**20:.2f} | {count} | {stored} | {jobs} "
                    f"| {swept('output_blobs')} |",
                    flush=True,
                )
                if time.monotonic() >= stop_at:
                    return
                await asyncio.sleep(every)
    finally:
        await conn.close()


async def soak(url: str, key: str, blobs: Path, dsn: str, args: argparse.Namespace) -> int:
    stop_at = time.monotonic() + args.duration
    requests, _ = await asyncio.gather(
        load(url, key, stop_at, args.concurrency), watch(url, blobs, dsn, stop_at + args.tail, args.every)
    )
    return requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=240.0, help="seconds of load")
    parser.add_argument("--tail", type=float, default=0.0, help="seconds to keep watching after the load stops")
    parser.add_argument("--ttl", type=int, default=30, help="file_ttl_s")
    parser.add_argument("--interval", type=float, default=10.0, help="[retention] interval_s")
    parser.add_argument("--every", type=float, default=15.0, help="seconds between samples")
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()

    from gateway.db.embedded import start_embedded  # noqa: PLC0415

    tmp = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    procs: list[subprocess.Popen[bytes]] = []
    embedded = None
    try:
        engine_port = free_port()
        engine_url = f"http://127.0.0.1:{engine_port}"
        engine = [sys.executable, str(ROOT / "bench" / "gateway.py"), "--serve-fake-engine", str(engine_port)]
        procs.append(subprocess.Popen(engine))
        embedded = start_embedded(tmp / "data")
        tenants = asyncio.run(create_tenants(embedded.uri, 0))
        blobs = tmp / "blobs"
        config = tmp / "gateway.toml"
        config.write_text(
            f'[engines.qolaba]\nkind = "qolaba"\nbase_url = "{engine_url}"\napi_key_env = "BENCH_ENGINE_KEY"\n\n'
            f'[routes]\ntext-to-image = ["qolaba"]\n\n[storage]\npath = "{blobs}"\n\n'
            f"[retention]\ninterval_s = {args.interval}\n"
        )
        port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "GATEWAY_CONFIG": str(config),
            "GATEWAY_DATABASE_URL": embedded.uri,
            "GATEWAY_DATA_DIR": str(tmp / "data"),
            "GATEWAY_LOG_LEVEL": "warning",
            "GATEWAY_DEMO_TENANT": "false",
            "GATEWAY_FILE_TTL_S": str(args.ttl),
            "BENCH_ENGINE_KEY": ENGINE_KEY,
        }
        gateway = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--host", "127.0.0.1", "--port", str(port)], env=env
        )
        procs.append(gateway)
        wait_http(f"{engine_url}/", proc=procs[0])
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/healthz", proc=gateway)
        print(f"file_ttl_s = {args.ttl}, [retention] interval_s = {args.interval:g}, {args.concurrency} clients")
        requests = asyncio.run(soak(url, tenants.hot, blobs, embedded.uri, args))
        print(f"{requests} requests in {args.duration:g} s")
    finally:
        for proc in reversed(procs):
            stop(proc)
        if embedded is not None:
            embedded.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
