"""The Engine interface every backend implements (vendors and our own GPU service).

An engine owns three things: what it can serve (`Capabilities`), a pure translation between
our `EngineRequest` and the vendor's wire format (tested without the network), and the HTTP
exchange itself, whose foreign exceptions are translated once, here, into `EngineError`s.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol

import msgspec

from gateway.domain.generation import (
    HONOURABLE_FIELDS,
    EngineRequest,
    EngineResult,
    Operation,
    Sampler,
    Style,
)

ProgressCallback = Callable[[float], None]
"""Called with the fraction done (0..1) as an engine learns of progress."""


class EngineError(Exception):
    """An engine could not produce the images. `retryable` decides fallback to the next engine."""

    retryable: ClassVar[bool] = True
    error_class: ClassVar[str] = "engine_failure"

    def __init__(self, message: str, *, spend_vendor_credits: float = 0.0) -> None:
        super().__init__(message)
        self.message = message
        self.spend_vendor_credits = spend_vendor_credits


class EngineRejected(EngineError):
    """The request itself is bad for this engine (a 4xx about our input): no fallback, no charge."""

    retryable = False
    error_class = "invalid_request"


class EngineUnavailable(EngineError):
    """The engine is failing (5xx, connection error, malformed answer, its own account problem)."""

    error_class = "engine_failure"


class EngineCredentialsRefused(EngineUnavailable):
    """The vendor refused our account's credentials (401/403): an operator problem, not the request's.

    The router opens the engine's breaker at once and shows it in the engine's status."""

    error_class = "credentials_refused"


class EngineRateLimited(EngineUnavailable):
    """The engine answered 429. `retry_after` seconds, when it said."""

    error_class = "rate_limited"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EngineTimeout(EngineError):
    """The engine did not answer, or its job did not finish, in time."""

    error_class = "timeout"


# Why a vendor that fetches inputs by URL is skipped: neither store nor gateway can give it one.
INPUT_URL_MISSING = (
    "{what} must be reachable by URL for this engine, and this gateway has none to give: set "
    "public_base_url (the gateway then serves inputs at signed, expiring URLs) or use the S3 blob store"
)


class Capabilities(msgspec.Struct, frozen=True, kw_only=True):
    """What an engine can serve. `check` names the first constraint a request breaks."""

    operations: frozenset[Operation]
    min_side: int = 64
    max_side: int = 2048
    side_multiple: int = 8
    min_steps: int = 1
    max_steps: int = 150
    min_guidance: float = 0.0
    max_guidance: float = 35.0
    max_n: int = 8
    samplers: frozenset[Sampler] | None = None  # None: any sampler name is accepted (mapped or ignored)
    styles: frozenset[Style] | None = None  # None: styles are accepted (mapped or ignored)
    models: frozenset[str] | None = None  # None: `model` is ignored by this engine
    needs_input_url: bool = False  # the vendor fetches inputs by URL only
    # Per operation, the HONOURABLE_FIELDS the engine passes on as asked (some only under conditions
    # its `received` applies, such as whole-number guidance); None: every one of them.
    honours: dict[Operation, frozenset[str]] | None = None

    def check(self, request: EngineRequest) -> str | None:
        """Return why this engine cannot serve `request` (naming the field), or None if it can."""
        if request.operation not in self.operations:
            return f"operation {request.operation} is not supported"
        for field, side in (("width", request.width), ("height", request.height)):
            if not self.min_side <= side <= self.max_side:
                return f"{field} must be between {self.min_side} and {self.max_side}"
            if side % self.side_multiple:
                return f"{field} must be a multiple of {self.side_multiple}"
        if not self.min_steps <= request.steps <= self.max_steps:
            return f"steps must be between {self.min_steps} and {self.max_steps}"
        if not self.min_guidance <= request.guidance_scale <= self.max_guidance:
            return f"guidance_scale must be between {self.min_guidance:g} and {self.max_guidance:g}"
        if request.n > self.max_n:
            return f"n must be at most {self.max_n}"
        if self.samplers is not None and request.sampler is not None and request.sampler not in self.samplers:
            return f"sampler {request.sampler} is not supported"
        if self.styles is not None and request.style is not None and request.style not in self.styles:
            return f"style {request.style} is not supported"
        if self.models is not None and request.model is not None and request.model not in self.models:
            return f"model {request.model} is not available"
        if self.needs_input_url and request.image is not None and request.image.url is None:
            return INPUT_URL_MISSING.format(what="input images")
        return None


def as_asked(request: EngineRequest) -> dict[str, Any]:
    """`received` of an engine that passes every field on unchanged (our own GPU service)."""
    fields = {"prompt": request.prompt}
    fields.update({f: getattr(request, f) for f in HONOURABLE_FIELDS if getattr(request, f) is not None})
    return fields


def dropped_fields(request: EngineRequest, received: Mapping[str, Any]) -> dict[str, str]:
    """The fields the tenant set that `received` (what an engine would send) drops or changes, each
    with what happens to it; empty when the engine honours everything the tenant asked for."""
    dropped: dict[str, str] = {}
    for field in HONOURABLE_FIELDS:
        if field not in request.explicit:
            continue
        asked = getattr(request, field)
        if field not in received:
            dropped[field] = f"{field} is not passed on by this engine"
        elif received[field] != asked:
            dropped[field] = f"{field} would be sent as {received[field]!r} instead of {asked!r}"
    return dropped


class Engine(Protocol):
    """A backend that turns an `EngineRequest` into images."""

    name: str  # the name in gateway.toml ([engines.NAME])
    kind: str  # api2convert, qolaba, aithriving, diffusion
    capabilities: Capabilities

    def check_options(self, options: Mapping[str, Any], operation: Operation | None = None) -> str | None:
        """Validate `engine_options.<kind>` against the vendor's document (for `operation`, when
        given, as some options differ per operation); the reason, or None."""
        ...

    def received(self, request: EngineRequest) -> dict[str, Any]:
        """What this engine sends its backend for `request`, as our HONOURABLE_FIELDS (a field it
        drops is absent; one it changes has the value sent). Pure: computed by the same
        translation `generate` uses, recorded on each attempt and compared by the router."""
        ...

    async def generate(self, request: EngineRequest, progress: ProgressCallback) -> EngineResult:
        """Produce up to `request.n` images, or raise an `EngineError`."""
        ...

    async def aclose(self) -> None:
        """Release what the engine holds (HTTP clients it owns)."""
        ...
