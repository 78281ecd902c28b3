"""What routing can end in besides a result; the API and the job runner map these to answers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gateway.domain.generation import EngineAttempt


class RoutingError(Exception):
    """A request could not be routed to a result."""


class NoEngineCanServe(RoutingError):
    """No routed engine can serve the request's parameters (the API answers 422).

    `reasons` maps each engine name considered to the constraint that excluded it; the
    message lists them, so the client learns which field to change. `fields` maps each request
    field that some engine would have dropped or changed to what each would have done with it.
    """

    def __init__(self, reasons: Mapping[str, str], *, fields: Mapping[str, str] | None = None) -> None:
        self.reasons = dict(reasons)
        self.fields = dict(fields or {})
        detail = "; ".join(f"{name}: {why}" for name, why in self.reasons.items())
        super().__init__(
            f"no engine can serve this request ({detail})" if detail else "no engine can serve this request"
        )


class RequestRejected(RoutingError):
    """An engine said the request itself is bad. No fallback: the job fails without charge."""

    def __init__(self, attempts: Sequence[EngineAttempt], message: str, *, lost_vendor_credits: float = 0.0) -> None:
        super().__init__(message)
        self.attempts = list(attempts)
        self.message = message
        self.lost_vendor_credits = lost_vendor_credits


class AllEnginesFailed(RoutingError):
    """Every engine tried failed, or none was available in time (503; the reservation is released)."""

    def __init__(self, attempts: Sequence[EngineAttempt], *, lost_vendor_credits: float = 0.0) -> None:
        self.attempts = list(attempts)
        self.lost_vendor_credits = lost_vendor_credits
        tried = ", ".join(f"{a.engine}: {a.outcome}" for a in self.attempts)
        super().__init__(f"all engines failed ({tried})" if tried else "no engine was available")
