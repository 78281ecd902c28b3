"""A lean HTTP/1.1 transport for the engine clients: asyncio protocols and httptools' C parser.

Why our own, when httpx-aiohttp and httpx's default transport exist (both are offered per engine:
`[engines.NAME] transport = "aiohttp" | "httpx"`, gateway/engines/registry.py). Measured on the 2-vCPU
development VM, 2026-12-04, medians of 5 rounds (`bench/engine_client.py --rounds 5`), client CPU per
engine call under EngineClient: this transport 161 µs, httpx-aiohttp 342 µs (2.1x), httpx's default
1,863 µs (11.6x). Through the whole gateway (`bench/gateway.py --transports own,aiohttp,httpx`,
alternated, 3 rounds; the figures are in BENCHMARKS.md) aiohttp costs more gateway CPU per request
than the 15 % the project allows a library before keeping its own code. And both libraries lack
behaviours tests/integration/engines/test_transport.py asks of an engine transport (its GAPS):
aiohttp reuses a kept-alive connection the server spoke on while idle (the next call reads that
stale answer as its own), has no write timeout, sends an idempotent request again after a new
connection closed, and does not serve pool waiters in order; httpcore does not send a GET again
after a kept-alive connection closed under it, sends a whole body the server has already answered,
and does not serve waiters in order either.

What this one does: keep-alive pool, timeouts, TLS, streamed bodies, one event-loop wakeup per small
response, and httpx's exceptions, so the engines see no difference. Deliberately absent: HTTP/2,
proxies, and retries, but for one case: a request that crossed the server closing a kept-alive
connection (its idle timeout) got no byte of answer, and is sent once more on a new connection when
its method is idempotent. A POST creating a vendor job is not, so a failed POST is reported, never
repeated.

This module is the pool: which connection a request gets, when one is reused, waiting for room.
One connection, writing a request and parsing its response, is gateway/engines/http1.py.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections import deque

import httpx

from gateway.engines.http1 import Connection, Key, ResponseStream

# Methods whose request may be sent twice to the same effect (RFC 9110, 9.2.2).
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


@functools.cache
def _default_ssl_context() -> ssl.SSLContext:
    """httpx's default verification (certifi's authorities, no environment), built once per process."""
    return httpx.create_ssl_context(verify=True, trust_env=False)


def _replayable(request: httpx.Request) -> bool:
    """Whether the request's body can be sent again: bytes can, a stream was consumed."""
    try:
        request.content  # noqa: B018 - raises for a body that is a stream
    except httpx.RequestNotRead:
        return False
    return True


class EngineTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 with a keep-alive pool under `limits`, for `httpx.AsyncClient(transport=...)`.

    `ssl_context` verifies HTTPS origins; the default is httpx's (certifi's authorities).
    Timeouts come from each request's `timeout` extension, which httpx's client sets.
    """

    def __init__(self, *, limits: httpx.Limits | None = None, ssl_context: ssl.SSLContext | None = None) -> None:
        limits = limits or httpx.Limits()
        self._max_connections = limits.max_connections
        self._max_idle = limits.max_keepalive_connections
        self._expiry = limits.keepalive_expiry
        self._ssl_context = ssl_context
        self._connections: set[Connection] = set()  # every open one: connecting, busy or idle
        self._idle: dict[Key, list[Connection]] = {}
        self._idle_count = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.raw_scheme
        if scheme not in (b"http", b"https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}")
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        key = (scheme, url.raw_host, url.port or (443 if scheme == b"https" else 80))
        # With requests waiting for the pool, a newcomer queues behind them rather than taking
        # the connection just handed to the first of them.
        conn = (None if self._waiters else self._take_idle(key)) or await self._acquire(key, timeouts)
        try:
            return await self._exchange(conn, request, timeouts)
        except (httpx.RemoteProtocolError, httpx.ReadError):  # the connection closed or was reset
            if not (conn.reused and conn.received == 0 and request.method in _IDEMPOTENT and _replayable(request)):
                raise
        # The server closed this kept-alive connection as our request reached it, so it was not
        # answered: send it once more, on a new connection (the other idle ones may be as old).
        return await self._exchange(await self._acquire(key, timeouts, idle=False), request, timeouts)

    async def _exchange(
        self, conn: Connection, request: httpx.Request, timeouts: dict[str, float | None]
    ) -> httpx.Response:
        """Send `request` on `conn` and read the response head; the body streams from the socket."""
        try:
            if conn.write_request(request):
                assert isinstance(request.stream, httpx.AsyncByteStream)  # httpx's client checked it
                chunked = "content-length" not in request.headers
                await conn.write_stream(request.stream, chunked, timeouts.get("write"))
            else:
                await conn.drain(timeouts.get("write"))
            await conn.read_head(timeouts.get("read"))
        except BaseException:
            conn.close()  # failed or cancelled mid-exchange: what the server makes of it is unknown
            self.release(conn)
            raise
        return httpx.Response(
            conn.status,
            headers=conn.headers,
            stream=ResponseStream(conn, timeouts.get("read")),
            extensions={
                "http_version": f"HTTP/{conn.parser.get_http_version()}".encode(),
                "reason_phrase": conn.reason,
            },
        )

    def _take_idle(self, key: Key) -> Connection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()  # the most recently used first: the likeliest to be still open
            self._idle_count -= 1
            if not conn.closed and (self._expiry is None or conn.loop.time() - conn.idle_since < self._expiry):
                conn.in_use = conn.reused = True
                return conn
            self._forget(conn)  # closed, or idle so long that the server may be closing it now
        return None

    async def _acquire(self, key: Key, timeouts: dict[str, float | None], *, idle: bool = True) -> Connection:
        """A connection once the pool has room, first come first served, within the pool timeout;
        a new one unless `idle`."""
        loop = asyncio.get_running_loop()
        pool_timeout = timeouts.get("pool")
        deadline = None if pool_timeout is None else loop.time() + pool_timeout
        queued = False
        while True:
            if self._closed:
                raise httpx.ConnectError("the engine client's transport is closed")
            # A newcomer queues behind the waiters, even those woken but not yet running.
            if queued or not self._waiters:
                conn = self._take_idle(key) if idle else None
                if conn is not None or self._free_slots() > 0 or self._evict():
                    if queued and (self._idle_count or self._free_slots() > (conn is None)):
                        self._wake_waiter()  # room for the next one too (two releases, one wakeup)
                    return conn or await self._connect(loop, key, timeouts.get("connect"))
            waiter = loop.create_future()
            (self._waiters.appendleft if queued else self._waiters.append)(waiter)  # beaten: keep the place
            queued = True
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except BaseException as exc:
                if waiter.done() and not waiter.cancelled():
                    self._wake_waiter()  # woken, but will not use the room: pass it on
                if isinstance(exc, TimeoutError):
                    raise httpx.PoolTimeout("no connection available in time") from exc
                raise
            finally:
                self._waiters.remove(waiter)

    def _free_slots(self) -> int:
        return 1 if self._max_connections is None else self._max_connections - len(self._connections)

    def _evict(self) -> bool:
        """Close the oldest idle connection (to another origin) to make room; whether there was one."""
        for idle in self._idle.values():
            if idle:
                self._idle_count -= 1
                self._forget(idle.pop(0))
                return True
        return False

    async def _connect(self, loop: asyncio.AbstractEventLoop, key: Key, limit: float | None) -> Connection:
        scheme, raw_host, port = key
        host = raw_host.decode("ascii")  # IDNA-encoded already
        conn = Connection(self, loop, key)
        self._connections.add(conn)
        ssl_context = None
        if scheme == b"https":
            ssl_context = self._ssl_context or _default_ssl_context()
            ssl_context.set_alpn_protocols(["http/1.1"])  # as httpcore does: we speak nothing else
        try:
            async with asyncio.timeout(limit):
                await loop.create_connection(
                    lambda: conn, host, port, ssl=ssl_context, server_hostname=host if ssl_context else None
                )
        except BaseException as exc:
            self._forget(conn)
            if isinstance(exc, TimeoutError):  # checked first: TimeoutError is an OSError
                raise httpx.ConnectTimeout(f"no connection to {host}:{port} in time") from exc
            if isinstance(exc, OSError):  # refused, unreachable, DNS, TLS verification (ssl.SSLError)
                raise httpx.ConnectError(f"{host}:{port}: {exc}") from exc
            raise
        return conn

    def release(self, conn: Connection) -> None:
        """Back to the pool if its response was complete and allows keep-alive, else closed."""
        reusable = conn.complete and conn.keep_alive and not conn.spoiled and not conn.closed
        if reusable and not self._closed and (self._max_idle is None or self._idle_count < self._max_idle):
            conn.take()  # drop a body nobody read, and read again (to notice the server closing)
            conn.in_use = False
            conn.idle_since = conn.loop.time()
            self._idle.setdefault(conn.key, []).append(conn)
            self._idle_count += 1
            self._wake_waiter()
        else:
            self._forget(conn)

    def idle_lost(self, conn: Connection) -> None:
        """The server closed an idle connection (or sent on it): it must not be handed out."""
        idle = self._idle.get(conn.key)
        if idle is not None and conn in idle:
            idle.remove(conn)
            self._idle_count -= 1
        self._forget(conn)

    def _forget(self, conn: Connection) -> None:
        conn.close()
        if conn in self._connections:
            self._connections.discard(conn)
            self._wake_waiter()

    def _wake_waiter(self) -> None:
        """Wake the first waiter not yet woken; it leaves the queue itself when it runs."""
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        """Close every connection, idle or busy; requests still waiting for one fail."""
        self._closed = True
        for conn in list(self._connections):
            conn.close()
        self._connections.clear()
        self._idle.clear()
        self._idle_count = 0
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
