"""The engine clients' HTTP/1.1 transport over real sockets: pooling, bodies, timeouts, TLS, errors."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.config import EngineConfig, TransportKind
from gateway.engines.base import EngineTimeout, EngineUnavailable
from gateway.engines.http import send
from gateway.engines.registry import build_client, engine_transport
from tests.waiting import eventually, run_ready_tasks

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Serve = Callable[..., Awaitable[int]]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request's head and its body (by Content-Length or chunked)."""
    head = await reader.readuntil(b"\r\n\r\n")
    fields = [line.partition(b":") for line in head.split(b"\r\n")[1:] if line]
    headers = {name.strip().lower(): value.strip() for name, _, value in fields}
    if b"content-length" in headers:
        return head, await reader.readexactly(int(headers[b"content-length"]))
    body = b""
    if headers.get(b"transfer-encoding") == b"chunked":
        while size := int((await reader.readuntil(b"\r\n"))[:-2], 16):
            body += (await reader.readexactly(size + 2))[:-2]
        await reader.readuntil(b"\r\n")
    return head, body


class TinyServer:
    """An HTTP/1.1 server on 127.0.0.1 that counts connections; `close_after_each` drops keep-alive,
    `stall` never answers, `delay` answers that late (the slowness is what such tests are about)."""

    def __init__(self, *, close_after_each: bool = False, stall: bool = False, delay: float = 0.0) -> None:
        self.connections = 0
        self.closed = 0  # connections that ended (the client closed them, or we did)
        self.close_after_each = close_after_each
        self.stall = stall
        self.delay = delay

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while await read_request(reader):
                if self.stall:
                    await reader.read()  # silent until the client gives up
                    return
                await asyncio.sleep(self.delay)
                writer.write(OK)
                await writer.drain()
                if self.close_after_each:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self.closed += 1  # only now: the client's end has the close, a test may count on it


def guarded(handler: Handler) -> Handler:
    """`handler`, ending quietly when the client goes away, and always closing its socket."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return handle


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler, ssl_context: ssl.SSLContext | None = None) -> int:
        server = await asyncio.start_server(guarded(handler), "127.0.0.1", 0, ssl=ssl_context)
        servers.append(server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    yield start
    for server in servers:
        server.close()


# Every test runs on each transport `[engines.NAME] transport` offers. What one of them does not do
# is an expected failure here, so that the list stays true: a fix upstream turns its entry red.
TRANSPORTS: tuple[TransportKind, ...] = ("own", "aiohttp", "httpx")
GAPS: dict[tuple[TransportKind, str], str] = {
    ("aiohttp", "test_a_connection_the_server_spoke_on_while_idle_is_not_reused"): (
        "aiohttp reuses it and reads the unasked answer as the next request's"
    ),
    ("aiohttp", "test_a_new_connection_closed_without_an_answer_is_an_error_not_a_retry"): (
        "aiohttp sends an idempotent request once more after any disconnect, on a new connection too"
    ),
    ("aiohttp", "test_a_waiting_request_goes_before_later_ones"): "aiohttp's pool does not serve waiters in order",
    ("aiohttp", "test_a_body_the_server_does_not_take_is_a_write_timeout"): "aiohttp has no write timeout",
    ("httpx", "test_an_idempotent_request_on_a_connection_closed_under_it_goes_again_on_a_new_one"): (
        "httpcore does not send a request again"
    ),
    ("httpx", "test_a_waiting_request_goes_before_later_ones"): "httpcore's pool does not serve waiters in order",
}
# Not run: the request waits for its whole timeout.
HANGS: dict[tuple[TransportKind, str], str] = {
    ("httpx", "test_an_early_answer_stops_the_request_body"): "httpcore sends the whole body before reading the answer",
}
_transport: list[TransportKind] = ["own"]


@pytest.fixture(autouse=True, params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> TransportKind:
    kind: TransportKind = request.param
    name = request.function.__name__
    if (kind, name) in HANGS:
        pytest.skip(HANGS[kind, name])
    gap = GAPS.get((kind, name))
    if gap:
        request.applymarker(pytest.mark.xfail(strict=True, reason=gap))
    _transport[0] = kind
    return kind


def make_transport(**kwargs: object) -> httpx.AsyncBaseTransport:
    return engine_transport(_transport[0], **kwargs)  # type: ignore[arg-type]


def engine_config(base_url: str, **config: float) -> EngineConfig:
    return EngineConfig(kind="qolaba", base_url=base_url, transport=_transport[0], **config)  # type: ignore[arg-type]


def engine_client(port: int, **config: float) -> httpx.AsyncClient:
    return build_client(engine_config(f"http://127.0.0.1:{port}", **config))


def raw_response(response: bytes) -> Handler:
    """A server that answers every request with `response` and closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response)
        await writer.drain()
        writer.close()

    return handle


# -- keep-alive ----------------------------------------------------------------------------------


async def test_engine_client_reuses_its_connection(serve: Serve) -> None:
    server = TinyServer()
    port = await serve(server.handle)
    async with engine_client(port) as client:
        for _ in range(3):
            assert (await client.get("/")).text == "ok"
    assert server.connections == 1


async def test_a_connection_the_server_closed_is_not_reused(serve: Serve) -> None:
    server = TinyServer(close_after_each=True)
    port = await serve(server.handle)
    async with engine_client(port) as client:
        for _ in range(3):
            assert (await client.get("/")).text == "ok"
            # The server's close arrives before the next request.
            await eventually(lambda: server.closed == server.connections, what="the server closing the connection")
    assert server.connections == 3


async def test_a_connection_the_server_spoke_on_while_idle_is_not_reused(serve: Serve) -> None:
    connections = spoken = 0
    answered = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections, spoken
        connections += 1
        await read_request(reader)
        writer.write(OK)
        await answered.wait()  # the client has its answer: the connection is idle
        answered.clear()
        writer.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")  # unasked
        await writer.drain()
        spoken += 1
        await reader.read()
        writer.close()

    port = await serve(handle)
    async with engine_client(port) as client:
        for _ in range(2):
            assert (await client.get("/")).text == "ok"
            answered.set()
            await eventually(lambda: spoken == connections, what="the server speaking on the idle connection")
    assert connections == 2


async def test_an_idle_connection_past_keepalive_expiry_is_replaced(serve: Serve) -> None:
    server = TinyServer()
    port = await serve(server.handle)
    transport = make_transport(limits=httpx.Limits(keepalive_expiry=0.05))
    async with httpx.AsyncClient(transport=transport, base_url=f"http://127.0.0.1:{port}") as client:
        assert (await client.get("/")).text == "ok"
        await asyncio.sleep(0.1)  # idle past the expiry: the time passing is what is tested
        assert (await client.get("/")).text == "ok"
    assert server.connections == 2


def closes_on_the_second_request() -> tuple[Handler, list[bytes]]:
    """A server that answers a connection's first request and closes it when the second arrives,
    as one whose keep-alive timeout ran out just as the client reused the connection; it records
    every request line it read."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _ = await read_request(reader)
        seen.append(head.split(b"\r\n")[0])
        writer.write(OK)
        await writer.drain()
        head, _ = await read_request(reader)
        seen.append(head.split(b"\r\n")[0])
        writer.close()

    return handle, seen


async def test_an_idempotent_request_on_a_connection_closed_under_it_goes_again_on_a_new_one(serve: Serve) -> None:
    handle, seen = closes_on_the_second_request()
    port = await serve(handle)
    async with engine_client(port) as client:
        assert (await client.get("/first")).text == "ok"
        assert (await client.get("/poll")).text == "ok"
    assert seen == [b"GET /first HTTP/1.1", b"GET /poll HTTP/1.1", b"GET /poll HTTP/1.1"]


async def test_a_post_on_a_connection_closed_under_it_is_an_error_not_sent_twice(serve: Serve) -> None:
    handle, seen = closes_on_the_second_request()
    port = await serve(handle)
    async with engine_client(port) as client:
        assert (await client.get("/first")).text == "ok"
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post("/jobs", json={"prompt": "x"})
    assert seen == [b"GET /first HTTP/1.1", b"POST /jobs HTTP/1.1"]


async def test_a_new_connection_closed_without_an_answer_is_an_error_not_a_retry(serve: Serve) -> None:
    seen = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal seen
        await read_request(reader)
        seen += 1
        writer.close()

    port = await serve(handle)
    async with engine_client(port) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get("/")
    assert seen == 1


async def test_closing_the_client_closes_its_pooled_connections(serve: Serve) -> None:
    server = TinyServer()
    port = await serve(server.handle)
    async with engine_client(port) as client:
        await asyncio.gather(*(client.get("/") for _ in range(3)))
        assert server.closed == 0
    await eventually(lambda: server.closed == 3, what="the server seeing its three connections closed")
    assert server.closed == server.connections == 3


# -- response bodies -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "body"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world", b"hello world"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            b"hello world",
        ),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello world", b"hello world"),  # ends at the close
        (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
        (b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", b"ok"),
    ],
    ids=["content-length", "chunked", "close-delimited", "no-content", "informational-first"],
)
async def test_response_bodies_are_read_by_their_framing(serve: Serve, response: bytes, body: bytes) -> None:
    port = await serve(raw_response(response))
    async with engine_client(port) as client:
        answer = await client.get("/")
    assert answer.content == body
    assert answer.http_version == "HTTP/1.1"
    assert "link" not in answer.headers  # an informational head is not the answer's


async def test_a_head_response_ends_at_its_headers_and_the_connection_is_reused(serve: Serve) -> None:
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        with_length = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"  # the GET's length; no body follows
        while True:
            head, _ = await read_request(reader)
            writer.write(with_length if head.startswith(b"HEAD") else with_length + b"hello")

    port = await serve(handle)
    async with engine_client(port) as client:
        head = await client.head("/")
        assert (head.status_code, head.content, head.headers["content-length"]) == (200, b"", "5")
        assert (await client.get("/")).content == b"hello"
    assert connections == 1


async def test_a_streamed_ndjson_response_is_readable_line_by_line_before_it_ends(serve: Serve) -> None:
    go = asyncio.Event()
    port = await serve(ndjson_handler(go))
    async with engine_client(port) as client:
        assert await read_ndjson(client, go) == ['{"progress": 1}', '{"done": true}']


def ndjson_handler(go: asyncio.Event) -> Handler:
    """Sends one line, and the last only once the client has read the first (`go`)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/x-ndjson\r\n\r\n")
        writer.write(b'10\r\n{"progress": 1}\n\r\n')
        await writer.drain()
        await go.wait()
        writer.write(b'f\r\n{"done": true}\n\r\n0\r\n\r\n')
        await writer.drain()

    return handle


async def read_ndjson(client: httpx.AsyncClient, go: asyncio.Event) -> list[str]:
    lines: list[str] = []
    async with asyncio.timeout(5), client.stream("POST", "/", content=b"{}") as response:
        async for line in response.aiter_lines():
            lines.append(line)
            go.set()  # the server sends the rest only now: the first line came while it waited
    return lines


async def test_a_slow_reader_holds_the_server_back_instead_of_buffering_the_body(serve: Serve) -> None:
    size, piece = 16 * 1024 * 1024, b"x" * 65536
    sent = 0
    writers: list[asyncio.StreamWriter] = []

    def held_back() -> bool:
        """The server's writes wait: the kernel buffers are full and asyncio's is past its high-water mark."""
        transport = writers[0].transport
        return transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        writers.append(writer)
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        while sent < size:
            writer.write(piece)
            await writer.drain()
            sent += len(piece)

    port = await serve(handle)
    async with engine_client(port) as client, client.stream("GET", "/") as response:
        chunks = response.aiter_raw()
        received = len(await anext(chunks))
        # Not reading: the transport stops reading, the kernel buffers fill, the server has to wait.
        await eventually(lambda: held_back() or sent >= size, what="the server held back or done")
        assert sent < size // 2
        async for chunk in chunks:
            received += len(chunk)
    assert received == size


# -- request bodies ------------------------------------------------------------------------------


class EchoServer:
    """Answers each request with the length of the body it received, and records the heads."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head, body = await read_request(reader)
                self.heads.append(head)
                answer = str(len(body)).encode() + b":" + body[:32]
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


async def test_a_streaming_request_body_is_sent_chunked(serve: Serve) -> None:
    server = EchoServer()
    port = await serve(server.handle)

    async def body() -> AsyncIterator[bytes]:
        for part in (b"hello ", b"", b"streamed ", b"world"):
            await asyncio.sleep(0)
            yield part

    async with engine_client(port) as client:
        assert (await client.post("/", content=body())).content == b"20:hello streamed world"
        assert (await client.post("/", content=b"bytes")).content == b"5:bytes"  # same connection, in step
    assert b"transfer-encoding: chunked" in server.heads[0].lower()
    assert len(server.heads) == 2


async def test_a_large_byte_body_arrives_whole(serve: Serve) -> None:
    port = await serve(EchoServer().handle)
    async with engine_client(port) as client:
        assert (await client.post("/", content=b"y" * 1_000_000)).content == b"1000000:" + b"y" * 32


async def test_an_early_answer_stops_the_request_body(serve: Serve) -> None:
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        head = await reader.readuntil(b"\r\n\r\n")
        if b"chunked" in head:  # refuse the upload without reading it
            writer.write(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n")
            await reader.read()
        else:
            writer.write(OK)
        writer.close()

    async def endless() -> AsyncIterator[bytes]:
        while True:
            await asyncio.sleep(0.01)  # an upload still going when the answer comes: this pace is the test
            yield b"z" * 1024

    port = await serve(handle)
    async with engine_client(port) as client:
        assert (await client.post("/", content=endless())).status_code == 413
        assert (await client.get("/")).text == "ok"
    assert connections == 2  # a connection with a half-sent body is not reused


async def test_a_header_with_a_line_break_is_refused_before_sending(serve: Serve) -> None:
    server = EchoServer()
    port = await serve(server.handle)
    async with engine_client(port) as client:
        with pytest.raises(httpx.LocalProtocolError):
            await client.get("/", headers={"X-Note": "a\r\nX-Injected: 1"})
        assert (await client.get("/")).status_code == 200
    assert len(server.heads) == 1


# -- the pool's limit ----------------------------------------------------------------------------


async def test_requests_beyond_the_pool_limit_wait_for_a_connection(serve: Serve) -> None:
    server = TinyServer(delay=0.02)
    port = await serve(server.handle)
    transport = make_transport(limits=httpx.Limits(max_connections=1))
    async with httpx.AsyncClient(transport=transport, base_url=f"http://127.0.0.1:{port}") as client:
        answers = await asyncio.gather(*(client.get("/") for _ in range(4)))
    assert [answer.text for answer in answers] == ["ok"] * 4
    assert server.connections == 1


async def test_a_waiting_request_goes_before_later_ones(serve: Serve) -> None:
    paths: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await read_request(reader)
            paths.append(head.split(b" ")[1])
            await asyncio.sleep(0.01)  # a slow answer, so the late request has to queue for the connection
            writer.write(OK)

    port = await serve(handle)
    transport = make_transport(limits=httpx.Limits(max_connections=1))
    async with httpx.AsyncClient(transport=transport, base_url=f"http://127.0.0.1:{port}") as client:

        async def busy() -> None:
            for n in range(3):  # each next request is sent the moment the previous one returns
                await client.get(f"/busy{n}")

        async def late() -> None:
            # Arrives while busy0 holds the only connection.
            await eventually(lambda: paths == [b"/busy0"], what="busy0 at the server")
            await client.get("/late")

        await asyncio.gather(busy(), late())
    assert paths == [b"/busy0", b"/late", b"/busy1", b"/busy2"]


async def test_room_freed_twice_serves_two_waiters(serve: Serve) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await read_request(reader)
            if head.startswith(b"GET /hold"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nha")  # and never the rest
                await reader.read()
                return
            await asyncio.sleep(0.3)  # longer than the pool timeout: the waiters cannot take turns
            writer.write(OK)

    port = await serve(handle)
    transport = make_transport(limits=httpx.Limits(max_connections=2))
    timeout = httpx.Timeout(5, pool=0.2)
    async with httpx.AsyncClient(transport=transport, base_url=f"http://127.0.0.1:{port}", timeout=timeout) as client:
        held = [await client.send(client.build_request("GET", "/hold"), stream=True) for _ in range(2)]
        first = asyncio.create_task(client.get("/"))
        await run_ready_tasks()  # first reaches the full pool and waits there: no I/O on its way
        second = asyncio.create_task(client.get("/"))  # queues behind first, which is about to be woken
        for response in held:
            await response.aclose()  # room for two, but only first was waiting when it was made
        assert [(await first).text, (await second).text] == ["ok", "ok"]


async def test_a_full_pool_is_a_timeout_after_the_pool_timeout(serve: Serve) -> None:
    finish = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nha")
            await finish.wait()
            finish.clear()
            writer.write(b"lf")

    port = await serve(handle)
    transport = make_transport(limits=httpx.Limits(max_connections=1))
    timeout = httpx.Timeout(5, pool=0.1)
    async with httpx.AsyncClient(transport=transport, base_url=f"http://127.0.0.1:{port}", timeout=timeout) as client:
        async with client.stream("GET", "/") as held:
            with pytest.raises(EngineTimeout):
                await send(client, client.build_request("GET", "/"), "test")
            waiting = asyncio.create_task(client.get("/", timeout=5))
            await run_ready_tasks()  # the request reaches the full pool and waits there: no I/O on its way
            finish.set()
            assert await held.aread() == b"half"
        await asyncio.sleep(0)
        finish.set()
        assert (await waiting).content == b"half"  # the waiter got the connection once it was free


# -- timeouts and failures -----------------------------------------------------------------------


async def test_a_silent_engine_is_a_timeout_and_a_closed_port_is_unavailable(serve: Serve) -> None:
    port = await serve(TinyServer(stall=True).handle)
    async with engine_client(port, request_timeout_s=0.2) as client:
        with pytest.raises(EngineTimeout):
            await send(client, client.build_request("GET", "/"), "test")
    async with engine_client(1) as client:
        with pytest.raises(EngineUnavailable) as refused:
            await send(client, client.build_request("GET", "/"), "test")
    assert isinstance(refused.value.__cause__, httpx.ConnectError)


async def test_a_connection_that_cannot_be_set_up_in_time_is_a_timeout(serve: Serve) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts the TCP connection, never answers the TLS handshake
        writer.close()

    port = await serve(silent)
    config = engine_config(f"https://127.0.0.1:{port}", connect_timeout_s=0.2)
    async with build_client(config) as client:
        with pytest.raises(EngineTimeout) as timed_out:
            await send(client, client.build_request("GET", "/"), "test")
    assert isinstance(timed_out.value.__cause__, httpx.ConnectTimeout)


async def test_a_body_the_server_does_not_take_is_a_write_timeout(serve: Serve) -> None:
    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(2)  # reads nothing for longer than the client's time limit: the behaviour tested
        writer.close()

    port = await serve(deaf)
    async with engine_client(port, request_timeout_s=0.3) as client:
        request = client.build_request("POST", "/", content=b"w" * (64 * 1024 * 1024))
        with pytest.raises(EngineTimeout) as timed_out:
            await send(client, request, "test")
    assert isinstance(timed_out.value.__cause__, httpx.WriteTimeout)


@pytest.mark.parametrize(
    ("response", "error"),
    [
        (b"", httpx.RemoteProtocolError),  # closed without a word
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", httpx.RemoteProtocolError),  # body cut short
        (b"HTTP/1.1 200 OK\r\nContent-Le", httpx.RemoteProtocolError),  # head cut short
        (b"SMTP ready\r\n\r\n", httpx.RemoteProtocolError),  # not HTTP
    ],
    ids=["disconnect", "short-body", "short-head", "malformed"],
)
async def test_a_broken_answer_is_the_engine_unavailable(
    serve: Serve, response: bytes, error: type[httpx.TransportError]
) -> None:
    port = await serve(raw_response(response))
    async with engine_client(port) as client:
        with pytest.raises(EngineUnavailable) as failed:
            await send(client, client.build_request("POST", "/", content=b"{}"), "test")
    assert type(failed.value.__cause__) is error
    if not response:
        assert str(failed.value.__cause__).startswith("Server disconnected")


# -- cancellation and unread bodies --------------------------------------------------------------


class PartialServer:
    """Answers with half a body and waits; sees when the client closes. `complete` answers in full."""

    def __init__(self) -> None:
        self.connections = 0
        self.client_closed: list[asyncio.Future[bytes]] = []
        self.complete = False

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        closed = asyncio.get_running_loop().create_future()
        self.client_closed.append(closed)
        try:
            while True:
                await read_request(reader)
                if self.complete:
                    writer.write(OK)
                    continue
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst part")
                closed.set_result(await reader.read())
                break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def cancel_mid_response(client: httpx.AsyncClient, server: PartialServer) -> None:
    """Cancel a task reading a response body; the connection closes and the next request works."""
    got_first = asyncio.Event()

    async def reader() -> None:
        async with client.stream("GET", "/") as response:
            async for _ in response.aiter_raw():
                got_first.set()

    task = asyncio.create_task(reader())
    await asyncio.wait_for(got_first.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.wait_for(server.client_closed[-1], 5) == b""  # the client closed it
    server.complete = True
    assert (await client.get("/")).text == "ok"
    assert server.connections == 2


async def test_cancelling_a_response_midway_closes_its_connection(serve: Serve) -> None:
    server = PartialServer()
    port = await serve(server.handle)
    async with engine_client(port) as client:
        await cancel_mid_response(client, server)


async def test_cancelling_while_waiting_for_the_answer_closes_the_connection(serve: Serve) -> None:
    client_closed: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        client_closed.set_result(await reader.read())

    port = await serve(mute)
    async with engine_client(port) as client:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await client.get("/")
        assert await asyncio.wait_for(client_closed, 5) == b""


async def test_a_body_closed_before_its_end_does_not_return_the_connection(serve: Serve) -> None:
    server = PartialServer()
    port = await serve(server.handle)
    async with engine_client(port) as client:
        async with client.stream("GET", "/") as response:
            assert await anext(response.aiter_raw()) == b"first part"
        assert await asyncio.wait_for(server.client_closed[0], 5) == b""
        server.complete = True
        assert (await client.get("/")).text == "ok"
        assert (await client.get("/")).text == "ok"
    assert server.connections == 2


# -- TLS and uvloop ------------------------------------------------------------------------------


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def _server_context(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A TLS server context for localhost, and a client context trusting only its certificate."""
    cert, key = _self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    return server_context, ssl.create_default_context(cafile=str(cert))


async def test_https_is_verified_against_the_trusted_certificates(serve: Serve, tmp_path: Path) -> None:
    server_context, trusting = _server_context(tmp_path)
    server = TinyServer()
    port = await serve(server.handle, server_context)

    async with httpx.AsyncClient(transport=make_transport(ssl_context=trusting)) as client:
        for _ in range(2):
            response = await client.get(f"https://localhost:{port}/")
            assert response.content == b"ok"
        with pytest.raises(httpx.ConnectError):  # the certificate names localhost, not the address
            await client.get(f"https://127.0.0.1:{port}/")
    assert server.connections == 1

    # The engine client trusts only the usual authorities: a self-signed vendor is refused.
    async with build_client(engine_config(f"https://localhost:{port}")) as client:
        with pytest.raises(EngineUnavailable, match="connection failed"):
            await send(client, client.build_request("GET", "/"), "test")


def test_the_engine_client_works_on_uvloop(tmp_path: Path) -> None:
    """`gateway serve` runs on uvloop, whose transports differ from asyncio's in places."""

    async def scenario() -> None:
        servers: list[asyncio.Server] = []

        async def start(handler: Handler, ssl_context: ssl.SSLContext | None = None) -> int:
            servers.append(await asyncio.start_server(guarded(handler), "127.0.0.1", 0, ssl=ssl_context))
            port: int = servers[-1].sockets[0].getsockname()[1]
            return port

        server = TinyServer()
        async with engine_client(await start(server.handle)) as client:
            for _ in range(2):
                assert (await client.get("/")).text == "ok"
        assert server.connections == 1

        go = asyncio.Event()
        async with engine_client(await start(ndjson_handler(go))) as client:
            assert await read_ndjson(client, go) == ['{"progress": 1}', '{"done": true}']

        partial = PartialServer()
        async with engine_client(await start(partial.handle)) as client:
            await cancel_mid_response(client, partial)

        async with engine_client(await start(TinyServer(stall=True).handle), request_timeout_s=0.1) as client:
            with pytest.raises(EngineTimeout):
                await send(client, client.build_request("GET", "/"), "test")

        server_context, trusting = _server_context(tmp_path)
        port = await start(TinyServer().handle, server_context)
        async with httpx.AsyncClient(transport=make_transport(ssl_context=trusting)) as client:
            assert (await client.get(f"https://localhost:{port}/")).content == b"ok"
        for listener in servers:
            listener.close()

    uvloop.run(scenario())
