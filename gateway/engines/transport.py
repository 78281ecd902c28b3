"""A lean HTTP/1.1 transport for the engine clients: asyncio protocols and httptools' C parser.

httpx's default transport (httpcore, h11, anyio) costs about 1 ms of CPU per engine call here;
this one does what the engines need (keep-alive pool, timeouts, TLS, streamed bodies) with one
event-loop wakeup per small response, and raises httpx's exceptions, so the engines see no
difference. Deliberately absent: HTTP/2, proxies, and retries, but for one case: a request that
crossed the server closing a kept-alive connection (its idle timeout) got no byte of answer, and is
sent once more on a new connection when its method is idempotent. A POST creating a vendor job is
not, so a failed POST is reported, never repeated.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections import deque
from typing import cast

import httptools
import httpx

_Key = tuple[bytes, bytes, int]  # (scheme, host, port): one pool of connections per origin

# A response body buffered beyond this stops reading from the socket until the reader catches up.
_HIGH_WATER = 256 * 1024
# Bodies up to this size go out in the same write as the head: one send for a typical JSON call.
_JOIN_BODY_LIMIT = 64 * 1024
# A response head larger than this is a broken or hostile server, not a vendor (h11 allows 16 KiB).
_MAX_HEAD_BYTES = 64 * 1024
# Methods whose request may be sent twice to the same effect (RFC 9110, 9.2.2).
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


@functools.cache
def _default_ssl_context() -> ssl.SSLContext:
    """httpx's default verification (certifi's authorities, no environment), built once per process."""
    return httpx.create_ssl_context(verify=True, trust_env=False)


def _expire(waiter: asyncio.Future[None], error: type[httpx.TimeoutException]) -> None:
    if not waiter.done():
        waiter.set_exception(error("timed out"))


def _replayable(request: httpx.Request) -> bool:
    """Whether the request's body can be sent again: bytes can, a stream was consumed."""
    try:
        request.content  # noqa: B018 - raises for a body that is a stream
    except httpx.RequestNotRead:
        return False
    return True


class _Connection(asyncio.Protocol):
    """One socket to an origin: parses one response at a time and wakes the task waiting on it."""

    def __init__(self, owner: EngineTransport, loop: asyncio.AbstractEventLoop, key: _Key) -> None:
        self.owner = owner
        self.loop = loop
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False  # by either side: never usable again
        self.in_use = True  # False while idle in the pool
        self.reused = False  # handed out from the pool at least once: the server may be closing it
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None  # the request's task, waiting for an event
        self._paused_writing = False
        self._paused_reading = False
        self.begin(head=False)

    def begin(self, *, head: bool) -> None:
        """Fresh state for the next response. The parser is per response too: it costs ~0.3 µs,
        and after a HEAD response it would still expect the body Content-Length announced."""
        self.parser = httptools.HttpResponseParser(self)
        self._head = head
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.spoiled = False  # the exchange went off script: the connection must not be reused
        self.error: Exception | None = None
        self.received = 0
        self._chunks: list[bytes] = []
        self._buffered = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self.in_use:
            self.close()  # an idle connection has nothing to say; whatever it sent (a 408) spoils it
            return
        self.received += len(data)
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed response: {exc}"))
        if not self.headers_done and self.received > _MAX_HEAD_BYTES:
            self._fail(httpx.RemoteProtocolError("response head too large"))
        self._wake()

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows and settles the response

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.in_use and not self.complete and self.error is None:
            if exc is not None:
                self.error = httpx.ReadError(str(exc) or type(exc).__name__)
            elif not self.received:
                # httpcore's words, for a request sent on a connection the server was closing
                self.error = httpx.RemoteProtocolError("Server disconnected without sending a response.")
            elif self.headers_done and self._close_delimited():
                self.complete = True  # a body without length or chunks ends where the server closes
            else:
                self.error = httpx.RemoteProtocolError("Server disconnected before the response was complete.")
        self._wake()
        if not self.in_use:
            self.owner._idle_lost(self)

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        self._wake()

    def on_message_begin(self) -> None:
        if self.complete:
            self.spoiled = True  # bytes beyond the response: the connection's framing is lost

    def on_status(self, status: bytes) -> None:
        self.reason += status  # may arrive in pieces

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if self.status < 200:
            return  # informational (103 Early Hints): the real response follows
        self.headers_done = True
        if self._head:
            # httptools cannot be told the request was HEAD, so it would wait for the body that
            # Content-Length announces. The response ends here instead; the parser's keep-alive
            # verdict is conservative (no length: close), and any later byte spoils the connection.
            self.complete = True
            self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        if self.complete:
            self.spoiled = True  # a body after a HEAD response's end
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused_reading and self.transport is not None:
            self._paused_reading = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self.status < 200:
            self.reason, self.headers = b"", []
        elif not self.complete:
            self.complete = True
            self.keep_alive = self.parser.should_keep_alive()  # before the parser resets its flags

    def _close_delimited(self) -> bool:
        names = {name.lower(): value for name, value in self.headers}
        return b"content-length" not in names and b"chunked" not in names.get(b"transfer-encoding", b"").lower()

    def _fail(self, error: Exception) -> None:
        if self.error is None and not self.complete:
            self.error = error
        self.close()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def _next_event(self, limit: float | None, error: type[httpx.TimeoutException]) -> None:
        """Wait for data, the close, or room to write; `limit` bounds this one wait."""
        waiter = self._waiter = self.loop.create_future()
        # A timer failing the future is much cheaper than asyncio.timeout's task cancellation.
        timer = None if limit is None else self.loop.call_later(limit, _expire, waiter, error)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def write_request(self, request: httpx.Request) -> bool:
        """Write the request's head, and its body when it is bytes; whether a body stream must follow."""
        self.begin(head=request.method == "HEAD")
        raw_headers = request.headers.raw
        parts = [request.method.encode("ascii"), b" ", request.url.raw_path, b" HTTP/1.1\r\n"]
        for name, value in raw_headers:
            parts += (name, b": ", value, b"\r\n")
        lines = len(raw_headers) + 2
        try:
            body: bytes | None = request.content
        except httpx.RequestNotRead:  # a streaming body
            body = None
            if "content-length" not in request.headers and "transfer-encoding" not in request.headers:
                parts.append(b"Transfer-Encoding: chunked\r\n")
                lines += 1
        parts.append(b"\r\n")
        head = b"".join(parts)
        # Every line must end where we ended it: a CR or LF inside a header would inject another.
        if head.count(b"\n") != lines or head.count(b"\r") != lines or b"\0" in head:
            raise httpx.LocalProtocolError("a request header contains CR, LF or NUL")
        assert self.transport is not None
        if body is None:
            self.transport.write(head)
        elif len(body) <= _JOIN_BODY_LIMIT:
            self.transport.write(head + body)
        else:
            self.transport.write(head)
            self.transport.write(body)
        return body is None

    async def drain(self, limit: float | None) -> None:
        """Wait while the socket's send buffer is full (asyncio's pause/resume_writing).

        A close ends the wait without an error, as in httpcore: reading the response then says
        what happened (the server's early answer, or that it sent none)."""
        while self._paused_writing and not self.closed:
            if self.received:
                # The server answers before taking the whole body (an early 413, say): read that.
                # The body is cut short, so the connection cannot carry another request.
                self.spoiled = True
                return
            await self._next_event(limit, httpx.WriteTimeout)

    async def write_stream(self, stream: httpx.AsyncByteStream, chunked: bool, limit: float | None) -> None:
        """Send a streaming request body, chunk-encoded unless the request gave its length."""
        assert self.transport is not None
        async for chunk in stream:
            if self.received or self.closed:
                self.spoiled = True  # answered early or hung up: as in drain
                return
            if chunk:
                self.transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                await self.drain(limit)
        if chunked:
            self.transport.write(b"0\r\n\r\n")
        await self.drain(limit)

    async def read_head(self, limit: float | None) -> None:
        while not self.headers_done:
            if self.error is not None:
                raise self.error
            await self._next_event(limit, httpx.ReadTimeout)

    async def read_body(self, limit: float | None) -> bytes:
        """The body bytes received so far (waiting for some), or b"" at the end of the body."""
        while True:
            if self._chunks:
                return self.take()
            if self.complete:
                return b""
            if self.error is not None:
                raise self.error
            await self._next_event(limit, httpx.ReadTimeout)

    def take(self) -> bytes:
        """Hand over the buffered body bytes, and resume reading if the buffer had paused it."""
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        self._buffered = 0
        if self._paused_reading and self.transport is not None:
            self._paused_reading = False
            self.transport.resume_reading()
        return data


class _ResponseStream(httpx.AsyncByteStream):
    """A response body as it arrives; closing it hands the connection back (or closes it)."""

    def __init__(self, conn: _Connection, limit: float | None) -> None:
        self._limit = limit
        self._pending = b""
        self._conn: _Connection | None = conn
        if conn.complete:
            # The whole response came with its head (the usual small JSON answer): the
            # connection is free for the next request before this body is even read.
            self._pending = conn.take()
            self._release()

    def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.owner._release(conn)

    def __aiter__(self) -> _ResponseStream:
        return self

    async def __anext__(self) -> bytes:
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        conn = self._conn
        if conn is None:
            raise StopAsyncIteration
        try:
            data = await conn.read_body(self._limit)
        except BaseException:
            conn.close()  # a failed or cancelled read leaves the connection mid-message
            self._release()
            raise
        if data:
            return data
        self._release()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        # Reused only if the whole message was received; a body cut short closes the connection.
        self._release()


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
        self._connections: set[_Connection] = set()  # every open one: connecting, busy or idle
        self._idle: dict[_Key, list[_Connection]] = {}
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
        self, conn: _Connection, request: httpx.Request, timeouts: dict[str, float | None]
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
            self._release(conn)
            raise
        return httpx.Response(
            conn.status,
            headers=conn.headers,
            stream=_ResponseStream(conn, timeouts.get("read")),
            extensions={
                "http_version": f"HTTP/{conn.parser.get_http_version()}".encode(),
                "reason_phrase": conn.reason,
            },
        )

    def _take_idle(self, key: _Key) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()  # the most recently used first: the likeliest to be still open
            self._idle_count -= 1
            if not conn.closed and (self._expiry is None or conn.loop.time() - conn.idle_since < self._expiry):
                conn.in_use = conn.reused = True
                return conn
            self._forget(conn)  # closed, or idle so long that the server may be closing it now
        return None

    async def _acquire(self, key: _Key, timeouts: dict[str, float | None], *, idle: bool = True) -> _Connection:
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

    async def _connect(self, loop: asyncio.AbstractEventLoop, key: _Key, limit: float | None) -> _Connection:
        scheme, raw_host, port = key
        host = raw_host.decode("ascii")  # IDNA-encoded already
        conn = _Connection(self, loop, key)
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

    def _release(self, conn: _Connection) -> None:
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

    def _idle_lost(self, conn: _Connection) -> None:
        """The server closed an idle connection (or sent on it): it must not be handed out."""
        idle = self._idle.get(conn.key)
        if idle is not None and conn in idle:
            idle.remove(conn)
            self._idle_count -= 1
        self._forget(conn)

    def _forget(self, conn: _Connection) -> None:
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
