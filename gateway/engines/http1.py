"""One HTTP/1.1 connection of the engine transport (gateway/engines/transport.py), as an asyncio
protocol on httptools' C parser: it writes a request, parses one response at a time, and wakes the
task waiting on it. The pool that owns the connections decides when one is reused or closed.
"""

from __future__ import annotations

import asyncio
from typing import Protocol, cast

import httptools
import httpx

Key = tuple[bytes, bytes, int]  # (scheme, host, port): one pool of connections per origin

# A response body buffered beyond this stops reading from the socket until the reader catches up.
_HIGH_WATER = 256 * 1024
# Bodies up to this size go out in the same write as the head: one send for a typical JSON call.
_JOIN_BODY_LIMIT = 64 * 1024
# A response head larger than this is a broken or hostile server, not a vendor (h11 allows 16 KiB).
_MAX_HEAD_BYTES = 64 * 1024


class Owner(Protocol):
    """The pool a connection belongs to."""

    def release(self, conn: Connection) -> None:
        """Take back a connection whose exchange ended: keep it for reuse, or close it."""

    def idle_lost(self, conn: Connection) -> None:
        """An idle connection was closed by the server, or spoke unasked: it must not be handed out."""


def _expire(waiter: asyncio.Future[None], error: type[httpx.TimeoutException]) -> None:
    if not waiter.done():
        waiter.set_exception(error("timed out"))


class Connection(asyncio.Protocol):
    """One socket to an origin: parses one response at a time and wakes the task waiting on it."""

    def __init__(self, owner: Owner, loop: asyncio.AbstractEventLoop, key: Key) -> None:
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
            self.owner.idle_lost(self)

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


class ResponseStream(httpx.AsyncByteStream):
    """A response body as it arrives; closing it hands the connection back (or closes it)."""

    def __init__(self, conn: Connection, limit: float | None) -> None:
        self._limit = limit
        self._pending = b""
        self._conn: Connection | None = conn
        if conn.complete:
            # The whole response came with its head (the usual small JSON answer): the
            # connection is free for the next request before this body is even read.
            self._pending = conn.take()
            self._release()

    def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.owner.release(conn)

    def __aiter__(self) -> ResponseStream:
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
