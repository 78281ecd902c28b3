"""Run an ASGI app on 127.0.0.1 (an ephemeral port) in a background thread."""

from __future__ import annotations

import threading
from typing import Any

import uvicorn

from tests.waiting import eventually_blocking


class ServerThread:
    """A uvicorn server in a daemon thread with its own event loop.

    Its own loop keeps a fault that hangs a request from blocking the tests' loop.
    """

    def __init__(self, app: Any) -> None:
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            log_level="warning",
            access_log=False,
            lifespan="off",
            ws="none",
            http="h11",
            loop="asyncio",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="fake-vendor", daemon=True)
        self.base_url = ""

    def start(self) -> str:
        """Start serving; returns the base URL once the socket is bound."""
        self._thread.start()
        eventually_blocking(
            lambda: self._server.started or not self._thread.is_alive(), timeout_s=10, what="the fake vendor server"
        )
        if not self._server.started:
            raise RuntimeError("fake vendor server did not start")
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    def stop(self) -> None:
        """Ask the server to exit and wait for its thread."""
        self._server.should_exit = True
        self._thread.join(timeout=5)
