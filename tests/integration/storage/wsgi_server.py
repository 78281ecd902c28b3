"""The storage servers' common frame: a WSGI app on 127.0.0.1 (an ephemeral port), in a daemon thread,
whose signature checks can be judged at a later time, and the XML error document S3 and GCS answer with."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol
from xml.sax.saxutils import escape

from werkzeug.serving import BaseWSGIServer, make_server

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication


class Refused(Exception):
    """A request the service refuses, with its HTTP status and the service's error code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code

    def answer(self, start_response: StartResponse, content_type: str = "application/xml") -> list[bytes]:
        """The refusal as S3 and GCS send it: `<Error><Code>…</Code><Message>…</Message></Error>`."""
        xml = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{self.code}</Code>'
            f"<Message>{escape(str(self))}</Message></Error>"
        ).encode()
        start_response(f"{self.status} Refused", [("Content-Type", content_type), ("Content-Length", str(len(xml)))])
        return [xml]


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
