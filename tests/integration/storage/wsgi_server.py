"""The storage servers' common frame: a WSGI app on 127.0.0.1 (an ephemeral port), in a daemon thread,
whose signature checks can be judged at a later time."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

from werkzeug.serving import BaseWSGIServer, make_server

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication


class Clocked(Protocol):
    clock_offset: timedelta  # added to the real time whenever a signature's validity is judged


class BackgroundWSGIServer:
    def __init__(self, app: WSGIApplication, clock: Clocked, *, name: str, **serve_options: Any) -> None:
        self._clock = clock
        self._server: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=True, **serve_options)
        self._thread = threading.Thread(target=self._server.serve_forever, name=name, daemon=True)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    @property
    def port(self) -> int:
        return self._server.server_port

    @contextmanager
    def clock_moved(self, by: timedelta) -> Iterator[None]:
        """Judge signatures as if `by` had passed, for the duration of the `with` block."""
        self._clock.clock_offset = by
        try:
            yield
        finally:
            self._clock.clock_offset = timedelta(0)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
