"""What every log line and span of one request or job carries: its request id, tenant, job and engine.

The fields live in a context variable, so they follow the request through its awaits and into the
tasks it starts (a sync request's job runs in a task that inherits them), and never leak between
two requests: each request and each job sets its own, and the request middleware resets it.
"""

from __future__ import annotations

import re
import secrets
from contextvars import ContextVar, Token
from dataclasses import dataclass, replace

REQUEST_ID_HEADER = "X-Request-Id"
# What a client may send as its own id: a token that cannot split a header or a log line, short
# enough to index. Anything else is replaced by one of ours (the client's is not echoed back).
_WELL_FORMED = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}")


@dataclass(frozen=True, slots=True)
class LogFields:
    """The correlation fields of the work the current task does; None where not known (yet)."""

    request_id: str | None = None
    tenant_id: str | None = None
    job_id: str | None = None
    engine: str | None = None


_FIELDS: ContextVar[LogFields] = ContextVar("gateway_log_fields", default=LogFields())  # noqa: B039 - frozen


def new_request_id() -> str:
    """A fresh request id: 128 random bits as 32 hex digits (the shape of a W3C trace id)."""
    return secrets.token_hex(16)


def accept_request_id(given: str | None) -> str:
    """The client's `X-Request-Id` when it is well formed, else a new one."""
    if given and _WELL_FORMED.fullmatch(given):
        return given
    return new_request_id()


def fields() -> LogFields:
    """The fields of the current request or job."""
    return _FIELDS.get()


def current_request_id() -> str | None:
    """The id of the request (or of the request that created the job) being served, if any."""
    return _FIELDS.get().request_id


def start(new: LogFields) -> Token[LogFields]:
    """Replace the fields for a new unit of work; `finish(token)` restores the previous ones."""
    return _FIELDS.set(new)


def finish(token: Token[LogFields]) -> None:
    """Restore the fields `start` replaced."""
    _FIELDS.reset(token)


def annotate(**changes: str | None) -> None:
    """Add fields learned along the way (the tenant, once the key is checked) for the rest of the
    current unit of work: the request middleware or `bind` that started it restores the old ones."""
    _FIELDS.set(replace(_FIELDS.get(), **changes))


class bind:  # lower case: used like a function, `with bind(engine=name):`
    """The current fields with `changes`, for the duration of the block. (A class, not a generator
    function: it runs on every engine attempt, and costs about half as much.)"""

    __slots__ = ("_changes", "_token")

    def __init__(self, **changes: str | None) -> None:
        self._changes = changes
        self._token: Token[LogFields] | None = None

    def __enter__(self) -> LogFields:
        fields = replace(_FIELDS.get(), **self._changes)
        self._token = _FIELDS.set(fields)
        return fields

    def __exit__(self, *_: object) -> None:
        if self._token is not None:
            _FIELDS.reset(self._token)
