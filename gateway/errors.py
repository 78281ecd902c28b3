"""The error tree and the one RFC 9457 problem+json handler.

Domain code raises `GatewayError` subclasses; this module alone turns them (and the framework's
own errors) into `application/problem+json` responses with a stable `type`.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any, ClassVar

import msgspec
from litestar import MediaType, Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    SerializationException,
    ValidationException,
)
from msgspec import UNSET, Meta, UnsetType

from gateway.db.outage import RETRY_AFTER_S, database_unavailable
from gateway.observability.context import current_request_id

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://gateway.invalid/problems/"


class FieldError(msgspec.Struct, frozen=True):
    """One invalid field: `field` is the JSON path without the leading `$.`."""

    field: Annotated[str, Meta(description="The field's path, e.g. `n` or `rules[0].base`; empty for the whole body.")]
    message: str


class Problem(msgspec.Struct, omit_defaults=True, kw_only=True):
    """An error as RFC 9457 problem details; `type` is stable. Extension members appear only where they apply."""

    type: Annotated[str, Meta(description="A URI naming the kind of problem; stable across releases.")]
    title: Annotated[str, Meta(description="A short summary of the kind of problem.")]
    status: Annotated[int, Meta(ge=400, le=599, description="The HTTP status code of this answer.")]
    # UNSET, not None: an absent member is left out of the body, never sent as null.
    detail: Annotated[str, Meta(description="What went wrong with this request.")] | UnsetType = UNSET
    instance: (
        Annotated[str, Meta(description="The path the problem occurred on (or the failed job's).")] | UnsetType
    ) = UNSET
    errors: Annotated[list[FieldError], Meta(description="422: every invalid field.")] | UnsetType = UNSET
    reasons: (
        Annotated[
            dict[str, str], Meta(description="422 when no engine can serve the request: why each engine was excluded.")
        ]
        | UnsetType
    ) = UNSET
    required_scope: Annotated[str, Meta(description="403: the scope the key lacks.")] | UnsetType = UNSET
    missing_scopes: (
        Annotated[list[str], Meta(description="403: scopes a new key asks for that the caller lacks.")] | UnsetType
    ) = UNSET
    beyond_caller: (
        Annotated[
            list[str],
            Meta(
                description="403: what of the key to rotate goes beyond the caller's own "
                "(`scopes`, `rate_limit_per_minute`, `monthly_cap`, `expires_at`)."
            ),
        ]
        | UnsetType
    ) = UNSET
    limit: (
        Annotated[
            str, Meta(description="429: which limit was reached, e.g. `concurrent_jobs` (the key's own: absent).")
        ]
        | UnsetType
    ) = UNSET
    balance: Annotated[float, Meta(description="402: the wallet's balance, in credits.")] | UnsetType = UNSET
    available: (
        Annotated[float, Meta(description="402: credits available (balance less those held for running jobs).")]
        | UnsetType
    ) = UNSET
    price: Annotated[float, Meta(description="402: what the request costs, in credits.")] | UnsetType = UNSET
    shortfall: Annotated[float, Meta(description="402: the credits missing.")] | UnsetType = UNSET
    monthly_cap: Annotated[float, Meta(description="402: the key's monthly credit cap.")] | UnsetType = UNSET
    spent_this_month: (
        Annotated[float, Meta(description="402: what the key has spent this month, in credits.")] | UnsetType
    ) = UNSET
    job_id: (
        Annotated[str, Meta(description="409: the job an earlier request with this Idempotency-Key runs.")] | UnsetType
    ) = UNSET
    pending_migrations: (
        Annotated[list[str], Meta(description="503 from /readyz: migrations not yet applied.")] | UnsetType
    ) = UNSET
    # A failed sync generation carries its job (a JobView: the document types it; errors.py sits
    # below the api package and cannot import the view).
    job: Annotated[Any, Meta(description="A failed synchronous generation: the job, with its attempts.")] = UNSET
    # Every problem the gateway answers names its request: what to quote to an operator, who finds the
    # request's log lines and trace by it. Unset only for a problem encoded outside any request.
    request_id: (
        Annotated[str, Meta(description="The X-Request-Id of this answer, for the operator to find its logs.")]
        | UnsetType
    ) = UNSET


class GatewayError(Exception):
    """Base of every error that maps to an HTTP answer."""

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        errors: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or self.title)
        self.http_status = self.status
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}
        self.extra = extra

    def problem(self, instance: str | None = None) -> Problem:
        # `extra` names Problem's extension members: an unknown one fails here, in every test that raises it.
        optional = {"detail": self.detail, "instance": instance, "errors": self.errors, **self.extra}
        return Problem(
            type=PROBLEM_BASE + self.slug,
            title=self.title,
            status=self.http_status,
            **{name: value for name, value in optional.items() if value is not None},
        )


class HttpError(GatewayError):
    """A framework error we did not raise ourselves; the status comes from the framework."""

    slug, title = "http-error", "HTTP error"


class BadRequest(GatewayError):
    status, slug, title = 400, "bad-request", "Bad request"


class MalformedBody(GatewayError):
    status, slug, title = 400, "malformed-body", "The request body could not be parsed"


class ValidationFailed(GatewayError):
    status, slug, title = 422, "validation-error", "The request is invalid"

    @classmethod
    def field(cls, field: str, message: str) -> ValidationFailed:
        return cls(f"{field}: {message}", errors=[FieldError(field, message)])


class Unauthenticated(GatewayError):
    status, slug, title = 401, "unauthenticated", "Missing or invalid credentials"


class PermissionDenied(GatewayError):
    status, slug, title = 403, "permission-denied", "Not allowed"


class NotFound(GatewayError):
    status, slug, title = 404, "not-found", "Not found"


class MethodNotAllowed(GatewayError):
    status, slug, title = 405, "method-not-allowed", "Method not allowed"


class Conflict(GatewayError):
    status, slug, title = 409, "conflict", "Conflict"


class Gone(GatewayError):
    status, slug, title = 410, "gone", "No longer available"


class PayloadTooLarge(GatewayError):
    status, slug, title = 413, "payload-too-large", "Payload too large"


class UnsupportedMediaType(GatewayError):
    status, slug, title = 415, "unsupported-media-type", "Unsupported media type"


class InsufficientCredits(GatewayError):
    status, slug, title = 402, "insufficient-credits", "Insufficient credits"


class RateLimited(GatewayError):
    status, slug, title = 429, "rate-limited", "Too many requests"


class EnginesUnavailable(GatewayError):
    status, slug, title = 503, "engines-unavailable", "No engine could produce the images"


class ServiceUnavailable(GatewayError):
    status, slug, title = 503, "service-unavailable", "Service unavailable"


class DatabaseUnavailable(ServiceUnavailable):
    """The database is unreachable or restarting; the request changed nothing and may be retried."""

    slug, title = "database-unavailable", "Database unavailable"


_JSON_PATH = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")


def field_errors_from_msgspec(message: str) -> list[FieldError]:
    """msgspec says 'Expected `int`, got `str` - at `$.n`'; turn that into a field error."""
    match = _JSON_PATH.search(message)
    if match is None:
        return [FieldError("", message)]
    path = match.group("path") or ""
    return [FieldError(path, message[: match.start()])]


def problem_response(problem: Problem, headers: dict[str, str] | None = None) -> Response[bytes]:
    """Encode one problem as the HTTP response, with the current request's id."""
    if problem.request_id is UNSET and (request_id := current_request_id()) is not None:
        problem = msgspec.structs.replace(problem, request_id=request_id)
    return Response(
        content=msgspec.json.encode(problem), status_code=problem.status, media_type=PROBLEM_JSON, headers=headers
    )


def _to_gateway_error(exc: Exception) -> GatewayError:
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, ValidationException):
        return _from_litestar_validation(exc)
    if isinstance(exc, SerializationException):
        return MalformedBody(str(exc))
    if isinstance(exc, NotFoundException):
        return NotFound("No such resource")
    if isinstance(exc, MethodNotAllowedException):
        return MethodNotAllowed(exc.detail, headers=dict(exc.headers or {}))
    if isinstance(exc, HTTPException):
        error = HttpError(exc.detail, headers=dict(exc.headers or {}))
        error.http_status = exc.status_code
        return error
    if database_unavailable(exc):
        log.warning("database unavailable: %s: %s", type(exc).__name__, exc)
        return DatabaseUnavailable(
            "The database is unreachable; retry shortly.", headers={"Retry-After": str(RETRY_AFTER_S)}
        )
    log.exception("unhandled error", exc_info=exc)
    return GatewayError("An unexpected error occurred; it has been logged.")


def _from_litestar_validation(exc: ValidationException) -> GatewayError:
    errors: list[FieldError] = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if isinstance(item, dict):
            key = str(item.get("key") or "")
            message = str(item.get("message") or "")
            errors.extend(
                FieldError(f"{key}.{e.field}".strip(".") if e.field else key, e.message)
                for e in field_errors_from_msgspec(message)
            )
    detail = "; ".join(f"{e.field}: {e.message}" if e.field else e.message for e in errors) or exc.detail
    return ValidationFailed(detail, errors=errors or None)


def handle_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """The single exception handler registered on the app."""
    error = _to_gateway_error(exc)
    if error.http_status >= 500:
        log.error("%s %s -> %s: %s", request.method, request.url.path, error.http_status, error.detail)
    return problem_response(error.problem(instance=request.url.path), error.headers)


__all__ = [
    "PROBLEM_JSON",
    "BadRequest",
    "Conflict",
    "DatabaseUnavailable",
    "EnginesUnavailable",
    "FieldError",
    "GatewayError",
    "Gone",
    "InsufficientCredits",
    "MalformedBody",
    "MediaType",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "Problem",
    "RateLimited",
    "ServiceUnavailable",
    "Unauthenticated",
    "UnsupportedMediaType",
    "ValidationFailed",
    "handle_exception",
    "problem_response",
]
