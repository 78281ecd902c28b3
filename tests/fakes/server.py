"""Run an ASGI app on 127.0.0.1 (an ephemeral port) in a background thread."""

from __future__ import annotations

import threading
import time
from typing import Any

import uvicorn


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
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fake vendor server did not start")
            time.sleep(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    def stop(self) -> None:
        """Ask the server to exit and wait for its thread."""
        self._server.should_exit = True
        self._thread.join(timeout=5)
