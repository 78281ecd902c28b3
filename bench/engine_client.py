"""Client CPU per engine call: httpx's default transport, the old asyncio backend, EngineTransport,
httpx-aiohttp's transport, and each under EngineClient (the engines' client, which skips httpx's
per-request client layer).

A minimal HTTP server (uvicorn, uvloop, httptools, a raw ASGI app answering a small JSON body) runs in
its own process; this process sends `--requests` POSTs with a small JSON body from `--concurrency`
tasks through each client in turn, the way the engines do (`json_post` + `send`), and reports the
CPU time of this process (time.process_time) per request and the requests per second, as the median
of `--rounds` rounds. The variants take turns within each round so that a noisy neighbour hurts all.

    .venv/bin/python bench/engine_client.py
    .venv/bin/python bench/engine_client.py --requests 5000 --rounds 5 --loop asyncio
"""

from __future__ import annotations

import argparse
import asyncio
import select
import socket
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpcore
import httpx
import msgspec
import uvloop
from httpx_aiohttp import AiohttpTransport

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this folder comes first on sys.path, and bench/gateway.py would shadow the
# `gateway` package. Put the repository root first instead.
if __name__ == "__main__":
    sys.path[:] = [str(ROOT), *(p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent)]

from gateway.engines.aiohttp_transport import AiohttpEngineTransport  # noqa: E402
from gateway.engines.client import EngineClient  # noqa: E402
from gateway.engines.http import json_post, send  # noqa: E402
from gateway.engines.transport import EngineTransport  # noqa: E402

BODY = {"app_id": "ap-bench", "prompt": "a lighthouse on a cliff at dusk", "batch": 1, "width": 512, "height": 512}
ANSWER = msgspec.json.encode({"task_id": "task-1", "status": "SUCCESS", "output": ["https://cdn.example/x.png"]})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Read the request body, answer ANSWER."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": ANSWER})


def serve(port: int) -> None:
    import uvicorn  # noqa: PLC0415

    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", lifespan="off", log_level="warning")


# -- (b): the engine clients' network backend before EngineTransport, verbatim from commit 72eb4df ----


@contextmanager
def _raising(timeout_error: type[Exception], os_error: type[Exception]) -> Iterator[None]:
    """Socket errors as the httpcore exceptions that httpx maps to its own (as httpcore's backends do)."""
    try:
        yield
    except TimeoutError as exc:
        raise timeout_error(str(exc)) from exc
    except OSError as exc:  # ssl.SSLError is one too
        raise os_error(str(exc)) from exc


def _is_readable(sock: socket.socket | None) -> bool:
    """Whether an idle connection's socket has data or EOF waiting: then the server closed it."""
    if sock is None or sock.fileno() == -1:
        return True
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))


# The `timeout` parameters are httpcore's interface (ASYNC109).
class AsyncioNetworkStream(httpcore.AsyncNetworkStream):
    """One connection of `AsyncioNetworkBackend`: asyncio streams, timeouts by `asyncio.timeout`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        with _raising(httpcore.ReadTimeout, httpcore.ReadError):
            async with asyncio.timeout(timeout):
                return await self._reader.read(max_bytes)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        if not buffer:
            return
        with _raising(httpcore.WriteTimeout, httpcore.WriteError):
            async with asyncio.timeout(timeout):
                self._writer.write(buffer)
                await self._writer.drain()

    async def aclose(self) -> None:
        self._writer.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore.AsyncNetworkStream:
        try:
            with _raising(httpcore.ConnectTimeout, httpcore.ConnectError):
                async with asyncio.timeout(timeout):
                    await self._writer.start_tls(ssl_context, server_hostname=server_hostname)
        except BaseException:
            await self.aclose()
            raise
        return self

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self._writer.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._writer.get_extra_info("sockname")
        if info == "server_addr":
            return self._writer.get_extra_info("peername")
        if info == "socket":
            return self._writer.get_extra_info("socket")
        if info == "is_readable":
            # The pool asks this of every idle connection before each request: a closed-by-the-server
            # keep-alive connection reads as readable (EOF) and is dropped instead of reused.
            return _is_readable(self._writer.get_extra_info("socket"))
        return None


class AsyncioNetworkBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network layer on plain asyncio instead of anyio, for the engine clients.

    Same contract and the same httpcore exceptions (so httpx raises the same errors), but each
    socket read or write is an `asyncio.timeout` instead of an anyio cancel scope that looks up
    the running async library and task every time. Measured against the fake engine (16
    concurrent clients, uvloop): httpx's CPU per request fell from 1.20-1.30 ms to 0.77-0.81 ms.
    """

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        with _raising(httpcore.ConnectTimeout, httpcore.ConnectError):
            async with asyncio.timeout(timeout):
                # No happy_eyeballs_delay: uvloop, the server's loop, does not take it.
                local_addr = (local_address, 0) if local_address else None
                reader, writer = await asyncio.open_connection(host, port, local_addr=local_addr)
            sock = writer.get_extra_info("socket")
            for option in socket_options or ():
                sock.setsockopt(*option)
        return AsyncioNetworkStream(reader, writer)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        with _raising(httpcore.ConnectTimeout, httpcore.ConnectError):
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_unix_connection(path)
            sock = writer.get_extra_info("socket")
            for option in socket_options or ():
                sock.setsockopt(*option)
        return AsyncioNetworkStream(reader, writer)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


# -- the clients -------------------------------------------------------------------------------------

LIMITS = httpx.Limits(max_connections=32, max_keepalive_connections=16)


def httpx_default() -> httpx.AsyncBaseTransport:
    return httpx.AsyncHTTPTransport(limits=LIMITS, trust_env=False)


def old_backend() -> httpx.AsyncBaseTransport:
    transport = httpx.AsyncHTTPTransport(limits=LIMITS, trust_env=False)
    transport._pool._network_backend = AsyncioNetworkBackend()
    return transport


def engine_transport() -> httpx.AsyncBaseTransport:
    return EngineTransport(limits=LIMITS)


def httpx_client(transport: Callable[[], httpx.AsyncBaseTransport]) -> Callable[[str], httpx.AsyncClient]:
    return lambda url: httpx.AsyncClient(base_url=url, transport=transport(), timeout=10, trust_env=False)


def aiohttp_as_shipped() -> httpx.AsyncBaseTransport:
    return AiohttpTransport(limits=LIMITS, trust_env=False)


def on_engine_client(transport: Callable[[], httpx.AsyncBaseTransport]) -> Callable[[str], httpx.AsyncClient]:
    return lambda url: EngineClient(base_url=url, transport=transport(), timeout=10)


VARIANTS: dict[str, Callable[[str], httpx.AsyncClient]] = {
    "(a) httpx default (httpcore, anyio)": httpx_client(httpx_default),
    "(b) httpcore on asyncio streams (before)": httpx_client(old_backend),
    "(c) EngineTransport (httptools)": httpx_client(engine_transport),
    "(d) EngineClient on EngineTransport": on_engine_client(engine_transport),
    "(e) httpx-aiohttp's AiohttpTransport": httpx_client(aiohttp_as_shipped),
    "(f) EngineClient on AiohttpEngineTransport": on_engine_client(lambda: AiohttpEngineTransport(limits=LIMITS)),
    "(g) EngineClient on httpx default": on_engine_client(httpx_default),
}


async def run(
    url: str, make: Callable[[str], httpx.AsyncClient], requests: int, concurrency: int
) -> tuple[float, float]:
    """CPU µs per request and requests per second for `requests` calls, after a warm-up."""
    async with make(url) as client:

        async def worker(count: int) -> None:
            for _ in range(count):
                response = await send(
                    client, json_post(client, f"{url}/submit", BODY, {"Authorization": "Bearer k"}), "b"
                )
                assert response.status_code == 200

        await asyncio.gather(*(worker(20) for _ in range(concurrency)))  # connections opened, caches warm
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    done = requests // concurrency * concurrency
    return cpu / done * 1e6, done / wall


async def bench(args: argparse.Namespace, url: str) -> None:
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, make in VARIANTS.items():
            results[name].append(await run(url, make, args.requests, args.concurrency))
    rounds = f"median of {args.rounds} rounds"
    print(f"{args.requests} requests per round, {args.concurrency} concurrent, {args.loop} loop, {rounds}")
    print(f"{'client':<46} {'CPU µs/request':>15} {'requests/s':>11}")
    for name, rows in results.items():
        cpu = statistics.median(row[0] for row in rows)
        rps = statistics.median(row[1] for row in rows)
        print(f"{name:<46} {cpu:>15.0f} {rps:>11.0f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.post(url, timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.1)
        runner = uvloop.run if args.loop == "uvloop" else asyncio.run
        runner(bench(args, url))
    finally:
        server.terminate()
        server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
