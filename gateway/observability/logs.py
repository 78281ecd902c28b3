"""Log lines with their correlation fields: plain text, or one JSON object a line.

`configure_logging` installs one handler on the root logger whose filter adds the request id,
trace id, tenant, job and engine of the work being done (gateway/observability/context.py) to
every record, whichever library wrote it. As a last line of defence the handler masks anything
shaped like one of our API keys, a webhook signing secret or a bearer credential, and bounds a
line's length, so that a careless message cannot ship a secret or a whole prompt to the log store.
"""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

import msgspec

from gateway.observability import context
from gateway.observability.tracing import trace_ids

LogFormat = Literal["text", "json"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
MAX_MESSAGE_CHARS = 2000  # past this a message is cut: no prompt-sized payload reaches the log store

_SECRETS = re.compile(
    r"igw(?:op)?_[0-9A-Za-z]{20,}"  # our API keys (gateway/auth/tokens.py)
    r"|whsec_[0-9A-Za-z+/=]+"  # webhook signing secrets
    r"|(?i:bearer)\s+[^\s\"',;]+"  # a credential in an Authorization header value
)
_CORRELATION = ("request_id", "trace_id", "span_id", "tenant_id", "job_id", "engine")


def redact(text: str) -> str:
    """`text` with secret-shaped substrings masked and its length bounded."""
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[:MAX_MESSAGE_CHARS] + f"... [{len(text) - MAX_MESSAGE_CHARS} characters cut]"
    return _SECRETS.sub("[redacted]", text)


class CorrelationFilter(logging.Filter):
    """Adds the current request's and trace's fields to each record (attributes, None when unknown)."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = context.fields()
        record.request_id = current.request_id
        record.tenant_id = current.tenant_id
        record.job_id = current.job_id
        record.engine = current.engine
        ids = trace_ids()
        record.trace_id, record.span_id = ids if ids is not None else (None, None)
        return True


class TextFormatter(logging.Formatter):
    """The classic line, with the request id in brackets (`-` outside a request), redacted."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "request_id", None) is None:
            record.request_id = "-"
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, the correlation fields that are
    known, and `exception` (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for name in _CORRELATION:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info))
        return msgspec.json.encode(line).decode()


def log_handler(log_format: LogFormat, stream: TextIO | None = None) -> logging.Handler:
    """A handler writing to `stream` (stderr) in `log_format`, with the correlation fields and redaction."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(CorrelationFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    return handler


def configure_logging(level: str, log_format: LogFormat, stream: TextIO | None = None) -> logging.Handler:
    """Route every logger through one handler on the root logger in `log_format`; returns it.

    Replaces handlers installed before (a second call, or `logging.basicConfig`)."""
    handler = log_handler(log_format, stream)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # httpx writes a line per HTTP call at INFO: noise at our volume, and a presigned URL's query is a credential.
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))
    return handler
