"""The gateway as a real HTTP server on 127.0.0.1, for clients that bring their own transport
(the official OpenAI SDK, the `gateway generate` command in a subprocess)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from gateway.app import create_app
from tests.conftest import gateway_settings, vendor_urls
from tests.waiting import eventually_blocking


class LiveGateway:
    """`create_app(settings)` under uvicorn, lifespan included, in a thread with its own loop.

    It shares the test's database and data folder, so it is one more replica beside the
    in-process `gateway` fixture: tenants made there can call it, its jobs show in the ledger.
    """

    def __init__(self, settings: Any, sock: socket.socket | None = None) -> None:
        config = uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=0,
            log_level="warning",
            access_log=False,
            lifespan="on",
            ws="none",
            http="h11",
            loop="asyncio",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        # `sock`: a socket bound in advance, for settings that must name the gateway's own address.
        sockets = [sock] if sock is not None else None
        self._thread = threading.Thread(
            target=lambda: self._server.run(sockets=sockets), name="live-gateway", daemon=True
        )
        self.base_url = ""

    def start(self) -> str:
        self._thread.start()
        eventually_blocking(
            lambda: self._server.started or not self._thread.is_alive(), timeout_s=30, what="the gateway server"
        )
        if not self._server.started:
            raise RuntimeError("the gateway server did not start")
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)


@pytest.fixture
def make_live_gateway(
    database_url: str, data_dir: Path, fake_api2convert: Any, fake_qolaba: Any, fake_aithriving: Any
) -> Iterator[Callable[..., str]]:
    """Start live gateways (settings overrides as keyword arguments); returns their base URLs."""
    vendors = vendor_urls(fake_api2convert, fake_qolaba, fake_aithriving)
    started: list[LiveGateway] = []

    def start(**overrides: Any) -> str:
        server = LiveGateway(gateway_settings(database_url, data_dir, vendors, **overrides))
        started.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in reversed(started):
            server.stop()


@pytest.fixture
def live_gateway(make_live_gateway: Callable[..., str]) -> str:
    """The base URL of a live gateway on the test database, against the fake vendors."""
    return make_live_gateway()
