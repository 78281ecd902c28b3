"""OpenAI's image request, answer and error shapes, and their translation to and from ours (no I/O
but the error handler's reuse of the app's). gateway/api/openai_compat.py serves them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, Response

from gateway.domain.generation import OutputFormat
from gateway.domain.requests import GenerationRequest, Prompt
from gateway.errors import GatewayError, ValidationFailed, field_errors_from_msgspec, handle_exception

ResponseFormat = Literal["url", "b64_json"]
Quality = Literal["auto", "low", "medium", "high", "standard", "hd"]
Size = Annotated[str, msgspec.Meta(pattern=r"^(auto|[0-9]{2,4}x[0-9]{2,4})$", description="WxH, or auto.")]
OpenAICount = Annotated[int, msgspec.Meta(ge=1, le=8, description="How many images; each one is charged.")]

_STEPS: dict[str, int] = {"low": 15, "high": 50, "hd": 50}
_OPENAI_MODELS = ("dall-e", "gpt-image", "chatgpt-image")
# Our field names as the OpenAI parameter that set them, for error bodies.
_PARAMS = {"width": "size", "height": "size", "steps": "quality"}


class OpenAIOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    prompt: Prompt
    model: str | None = None
    n: OpenAICount | None = None
    size: Size | None = None
    response_format: ResponseFormat | None = None
    output_format: OutputFormat | None = None
    quality: Quality | None = None
    user: str | None = None
    background: str | None = None
    output_compression: int | None = None
    moderation: str | None = None
    stream: bool | None = None
    partial_images: int | None = None


class OpenAIImageGeneration(OpenAIOptions, kw_only=True, forbid_unknown_fields=True):
    """The body of OpenAI's `POST /images/generations`."""

    style: str | None = None


class OpenAIImageEdit(OpenAIOptions, kw_only=True, forbid_unknown_fields=True):
    """The text fields of OpenAI's multipart `POST /images/edits`."""

    input_fidelity: str | None = None


class OpenAIImage(msgspec.Struct, kw_only=True, omit_defaults=True):
    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str | None = None


class OpenAIImagesResponse(msgspec.Struct, kw_only=True):
    created: int
    data: list[OpenAIImage]
    output_format: str
    size: str


class OpenAIErrorDetail(msgspec.Struct, kw_only=True):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(msgspec.Struct, kw_only=True):
    error: OpenAIErrorDetail


# -- errors ---------------------------------------------------------------------------------


def _error_type(status: int) -> str:
    if status >= 500:
        return "server_error"
    return {402: "insufficient_quota", 403: "permission_error", 429: "rate_limit_error"}.get(
        status, "invalid_request_error"
    )


def _openai_error_response(status: int, problem: dict[str, Any], headers: dict[str, str]) -> Response[bytes]:
    errors = problem.get("errors") or []
    field = errors[0]["field"] if errors else None
    slug = str(problem.get("type", "")).rsplit("/", 1)[-1].replace("-", "_") or None
    code = {401: "invalid_api_key", 402: "insufficient_quota"}.get(status, slug)
    if status == 422:
        status = 400  # OpenAI answers 400 to a request it cannot accept; its clients expect that
    detail = OpenAIErrorDetail(
        message=str(problem.get("detail") or problem.get("title") or "error"),
        type=_error_type(status),
        param=_PARAMS.get(field, field) if field else None,
        code=code,
    )
    return Response(
        msgspec.json.encode(OpenAIError(error=detail)),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def openai_exception_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """The app's problem+json answer (same classification and logging), reshaped as OpenAI's."""
    problem_response = handle_exception(request, exc)
    problem = msgspec.json.decode(problem_response.content) if isinstance(problem_response.content, bytes) else {}
    headers = {k: v for k, v in problem_response.headers.items() if k.lower() != "content-type"}
    return _openai_error_response(problem_response.status_code or 500, problem, headers)


class StillRunning(GatewayError):
    status, slug, title = 504, "still-running", "The images are not ready yet"


# The answers of both OpenAI-compatible routes beyond authentication's, in OpenAI's error shape.
OPENAI_PROBLEMS = {
    400: "The request is invalid (OpenAI answers 400 where /v1 answers 422); `error.param` names the field.",
    402: "The wallet cannot cover the images (`insufficient_quota`).",
    409: "The Idempotency-Key was used with another body, or its first request still runs.",
    503: "Every engine failed (nothing charged), or the database is unreachable.",
    504: "The images are not ready within the wait; the job runs on at `/v1/jobs/{id}` (`x-should-retry: false`).",
}


# -- translation ----------------------------------------------------------------------------


def _size(size: str | None) -> tuple[int, int] | None:
    if size is None or size == "auto":
        return None
    width, _, height = size.partition("x")
    return int(width), int(height)


def common_fields(options: OpenAIOptions) -> dict[str, Any]:
    if options.stream:
        raise ValidationFailed.field("stream", "streaming is not supported; leave stream unset")
    fields: dict[str, Any] = {"prompt": options.prompt, "n": options.n or 1}
    size = _size(options.size)
    if size is not None:
        fields["width"], fields["height"] = size
    if options.output_format is not None:
        fields["output_format"] = options.output_format
    if options.quality in _STEPS:
        fields["steps"] = _STEPS[options.quality]
    if options.model and not options.model.startswith(_OPENAI_MODELS):
        fields["model"] = options.model
    return fields


def our_request(fields: dict[str, Any], struct: type[GenerationRequest]) -> GenerationRequest:
    try:
        return msgspec.convert(fields, struct)
    except msgspec.ValidationError as exc:
        errors = field_errors_from_msgspec(str(exc))
        raise ValidationFailed(
            "; ".join(f"{_PARAMS.get(e.field, e.field)}: {e.message}" for e in errors), errors=errors
        ) from exc
