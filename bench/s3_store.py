"""S3 blob store benchmark: put/get/presign latency and client CPU against a local moto server.

moto (Python) answers every request, so wall latency here is mostly moto's; the client's own
cost is the CPU time this process spends per operation (obstore's Rust threads included). Each
implementation runs `--rounds` times, alternated with the others, on the same server; the table
gives medians over all operations. Another implementation with the same constructor can be
compared with `--impl module:Class` (e.g. the hand-written client this one replaced, from git).

    .venv/bin/python -m bench.s3_store --ops 200 --size 262144
    .venv/bin/python -m bench.s3_store --impl gateway.storage.s3:S3BlobStore --impl old_s3:S3BlobStore
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable
from typing import Any

import httpx


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{endpoint}/moto-api/", timeout=1)
            return server, endpoint
        except httpx.TransportError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError("moto server did not start")


def _load(spec: str) -> Any:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


async def _round(store: Any, ops: int, data: bytes, samples: dict[str, list[tuple[float, float]]]) -> None:
    for n in range(ops):
        key = f"bench/{n}.png"
        calls: list[tuple[str, Awaitable[object]]] = [
            ("put", store.put(key, data, "image/png")),
            ("get", store.get(key)),
            ("presign", store.presigned_url(key, 600)),
            ("delete", store.delete(key)),
        ]
        for op, call in calls:  # each coroutine runs only when awaited, in this order
            cpu, wall = time.process_time(), time.perf_counter()
            await call
            samples[op].append((time.perf_counter() - wall, time.process_time() - cpu))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impl", action="append", help="module:Class, repeatable (default: the gateway's)")
    parser.add_argument("--ops", type=int, default=200, help="put/get/presign/delete cycles per round")
    parser.add_argument("--size", type=int, default=256 * 1024, help="bytes per object")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    impls = args.impl or ["gateway.storage.s3:S3BlobStore"]
    server, endpoint = _start_moto()
    try:
        async with httpx.AsyncClient() as client:  # moto takes an unsigned CreateBucket
            (await client.put(f"{endpoint}/bench")).raise_for_status()
        stores = {
            spec: _load(spec)(endpoint_url=endpoint, bucket="bench", access_key="AKIDBENCH", secret_key="secret")
            for spec in impls
        }
        data = os.urandom(args.size)
        samples: dict[str, dict[str, list[tuple[float, float]]]] = {spec: defaultdict(list) for spec in impls}
        for store in stores.values():  # warm-up: connections, lazy imports
            await _round(store, 5, data, defaultdict(list))
        for _ in range(args.rounds):
            for spec, store in stores.items():
                await _round(store, args.ops, data, samples[spec])
        for store in stores.values():
            await store.aclose()
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(f"# {platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, moto server")
    print(f"# {args.rounds} alternated rounds x {args.ops} ops, {args.size} bytes per object; medians")
    print(f"{'implementation':40} {'op':8} {'p50 ms':>8} {'p90 ms':>8} {'CPU ms/op':>10}")
    for spec in impls:
        for op, values in samples[spec].items():
            walls = sorted(w for w, _ in values)
            cpu = statistics.median(c for _, c in values)
            p90 = walls[int(len(walls) * 0.9)]
            print(f"{spec:40} {op:8} {statistics.median(walls) * 1e3:8.2f} {p90 * 1e3:8.2f} {cpu * 1e3:10.3f}")


if __name__ == "__main__":
    asyncio.run(main())
