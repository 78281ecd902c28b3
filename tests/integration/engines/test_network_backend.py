"""The engine clients' asyncio network layer: keep-alive, TLS, and the same errors as httpx's own."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpcore
import httpx
import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.config import EngineConfig
from gateway.engines.base import EngineTimeout, EngineUnavailable
from gateway.engines.http import AsyncioNetworkBackend, send
from gateway.engines.registry import build_client


class TinyServer:
    """An HTTP/1.1 server on 127.0.0.1 that counts connections; `close_after_each` drops keep-alive."""

    def __init__(self, *, close_after_each: bool = False, stall: bool = False) -> None:
        self.connections = 0
        self.close_after_each = close_after_each
        self.stall = stall

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                if self.stall:
                    await asyncio.sleep(5)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok")
                await writer.drain()
                if self.close_after_each:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[object]:
    servers: list[asyncio.Server] = []

    async def start(handler: TinyServer, ssl_context: ssl.SSLContext | None = None) -> int:
        server = await asyncio.start_server(handler.handle, "127.0.0.1", 0, ssl=ssl_context)
        servers.append(server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    yield start
    for server in servers:
        server.close()


async def test_engine_client_reuses_its_connection(serve) -> None:  # type: ignore[no-untyped-def]
    server = TinyServer()
    port = await serve(server)
    async with build_client(EngineConfig(kind="qolaba", base_url=f"http://127.0.0.1:{port}")) as client:
        for _ in range(3):
            assert (await client.get("/")).text == "ok"
    assert server.connections == 1


async def test_a_connection_the_server_closed_is_not_reused(serve) -> None:  # type: ignore[no-untyped-def]
    server = TinyServer(close_after_each=True)
    port = await serve(server)
    async with build_client(EngineConfig(kind="qolaba", base_url=f"http://127.0.0.1:{port}")) as client:
        for _ in range(3):
            assert (await client.get("/")).text == "ok"
            await asyncio.sleep(0.05)  # the server's close arrives before the next request
    assert server.connections == 3


async def test_a_silent_engine_is_a_timeout_and_a_closed_port_is_unavailable(serve) -> None:  # type: ignore[no-untyped-def]
    port = await serve(TinyServer(stall=True))
    config = EngineConfig(kind="qolaba", base_url=f"http://127.0.0.1:{port}", request_timeout_s=0.2)
    async with build_client(config) as client:
        with pytest.raises(EngineTimeout):
            await send(client, client.build_request("GET", "/"), "test")
    closed = EngineConfig(kind="qolaba", base_url="http://127.0.0.1:1")
    async with build_client(closed) as client:
        with pytest.raises(EngineUnavailable):
            await send(client, client.build_request("GET", "/"), "test")


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


async def test_https_is_verified_against_the_trusted_certificates(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cert, key = _self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    server = TinyServer()
    port = await serve(server, server_context)

    trusting = httpx.create_ssl_context(verify=ssl.create_default_context(cafile=str(cert)))
    pool = httpcore.AsyncConnectionPool(ssl_context=trusting, network_backend=AsyncioNetworkBackend())
    async with pool:
        for _ in range(2):
            response = await pool.request("GET", f"https://localhost:{port}/")
            assert response.content == b"ok"
    assert server.connections == 1

    # The engine client trusts only the system's authorities: a self-signed vendor is refused.
    async with build_client(EngineConfig(kind="qolaba", base_url=f"https://localhost:{port}")) as client:
        with pytest.raises(EngineUnavailable, match="connection failed"):
            await send(client, client.build_request("GET", "/"), "test")


def test_the_engine_client_works_on_uvloop(tmp_path: Path) -> None:
    """`gateway serve` runs on uvloop, whose connection API differs from asyncio's in places."""

    async def scenario() -> None:
        server = TinyServer()
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        async with build_client(EngineConfig(kind="qolaba", base_url=f"http://127.0.0.1:{port}")) as client:
            for _ in range(2):
                assert (await client.get("/")).text == "ok"
        listener.close()
        assert server.connections == 1

        cert, key = _self_signed(tmp_path)
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_context.load_cert_chain(cert, key)
        listener = await asyncio.start_server(TinyServer().handle, "127.0.0.1", 0, ssl=server_context)
        port = listener.sockets[0].getsockname()[1]
        trusting = ssl.create_default_context(cafile=str(cert))
        async with httpcore.AsyncConnectionPool(ssl_context=trusting, network_backend=AsyncioNetworkBackend()) as pool:
            assert (await pool.request("GET", f"https://localhost:{port}/")).content == b"ok"
        listener.close()

    uvloop.run(scenario())
