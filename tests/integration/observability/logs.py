"""Capture what the gateway logs, as `gateway serve` would write it, for tests to read."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from gateway.observability.logs import LogFormat, log_handler


class CapturedLogs:
    def __init__(self, stream: io.StringIO) -> None:
        self._stream = stream

    @property
    def text(self) -> str:
        return self._stream.getvalue()

    def lines(self) -> list[dict[str, Any]]:
        """Each line as the JSON object it must be."""
        return [json.loads(line) for line in self.text.splitlines()]


@contextmanager
def captured_logs(log_format: LogFormat = "json", level: int = logging.INFO) -> Iterator[CapturedLogs]:
    """Every record of every logger at `level` and above, through the production handler."""
    stream = io.StringIO()
    handler = log_handler(log_format, stream)
    root = logging.getLogger()
    before = root.level
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield CapturedLogs(stream)
    finally:
        root.removeHandler(handler)
        root.setLevel(before)
