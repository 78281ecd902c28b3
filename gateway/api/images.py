"""POST /v1/text-to-image, /v1/image-to-image, /v1/inpaint: the routes, their JSON fast path and
their answers; the submission itself is gateway/api/submission.py."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, Response, post
from litestar.di import NamedDependency
from litestar.middleware import DefineMiddleware
from litestar.params import HeaderParameter, JSONBody
from litestar.types import ASGIApp, Receive, Scope, Send

from gateway.api.multipart import FormOrJsonRequest
from gateway.api.strict import is_json, strict_body
from gateway.api.submission import generate
from gateway.api.views import JobView
from gateway.auth.guard import authorize
from gateway.auth.keys import Principal
from gateway.domain.requests import GenerationRequest, ImageToImageRequest, InpaintRequest, TextToImageRequest
from gateway.errors import (
    PROBLEM_BASE,
    Problem,
    problem_response,
)
from gateway.state import Services

IDEMPOTENCY_KEY_MAX = 255
IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        required=False,
        max_length=IDEMPOTENCY_KEY_MAX,
        description="Same key and body replays the first answer; another body gets 409.",
    ),
]
Prefer = Annotated[
    str | None, HeaderParameter(name="Prefer", required=False, description="`respond-async` answers 202 at once.")
]


async def submit(**arguments: Any) -> Response[Any]:
    """`generate`, answered the /v1 way: 200 with the job, 202 + Location while it runs, and a
    failed sync job as problem+json (422 rejected, 503 engines down) carrying the job."""
    submitted = await generate(**arguments)
    view = submitted.view
    if submitted.replayed:
        return Response(view, status_code=200, headers={"Idempotent-Replayed": "true"})
    location = {"Location": f"/v1/jobs/{view.id}"}
    if submitted.pending:
        return Response(view, status_code=202, headers=location)
    if view.state != "succeeded":
        return _failure_response(view, location)
    return Response(view, status_code=200, headers=location)


def _failure_response(view: JobView, headers: dict[str, str]) -> Response[Any]:
    """A sync job that failed answers with its problem as problem+json (422 rejected, 503 engines
    down); the job itself, with its attempts, rides along as the `job` extension member."""
    error = view.error or {}
    problem = Problem(
        type=str(error.get("type", PROBLEM_BASE + "job-failed")),
        title=str(error.get("title", "The job failed")),
        status=int(error["status"]) if isinstance(error.get("status"), int) else 500,
        detail=str(error.get("detail") or "The job failed."),
        instance=f"/v1/jobs/{view.id}",
        job=msgspec.to_builtins(view),
    )
    return problem_response(problem, headers)


class JsonGeneration:
    """Route middleware of the generation endpoints: answers a JSON request itself, with what the
    route would run (the app's guard, the strict body decoding, `submit`), and leaves the rest to
    the route (forms, other media types, and an Idempotency-Key the route's parameter would refuse).

    Why: past routing, Litestar's way to the handler (the guard's handler copy, the before-request
    hook, the kwargs model decoding the body a second time, dependency injection) and from its
    `Response` back cost about 0.2 ms of CPU per sync generation at one client, the largest item of
    the gateway's own. What is skipped is generic machinery only: errors raised here reach the
    app's exception handler, and the answer goes through the app's before-send hook, as the
    route's do. The routes stay the OpenAPI document's source and serve the forms."""

    def __init__(self, app: ASGIApp, operation: str) -> None:
        self.app = app
        self.operation = operation

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request: Request[Any, Any, Any] = Request(scope, receive)
        key = request.headers.get("idempotency-key")
        if not is_json(request) or (key is not None and len(key) > IDEMPOTENCY_KEY_MAX):
            await self.app(scope, receive, send)
            return
        await authorize(request, scope["route_handler"])
        body = await strict_body(request)
        assert isinstance(body, GenerationRequest), "a generation route's body is a GenerationRequest"
        response = await submit(
            services=request.app.state.services,
            principal=request.state.principal,
            request=request,
            operation=self.operation,
            body=body,
            idempotency_key=key,
            prefer=request.headers.get("prefer"),
        )
        await response.to_asgi_response(app=None, request=request)(scope, receive, send)


_GENERATION_PROBLEMS = {
    402: "The wallet cannot cover `n` images at the unit price; nothing was reserved.",
    409: "The Idempotency-Key was used with another body, or its first request still runs (`job_id`).",
    422: "A field is invalid (`errors`), no routed engine can serve the request (`reasons`), or the engine "
    "rejected it (the failed job in `job`; nothing charged).",
    429: "The key's rate limit, or the tenant's limit on concurrent jobs, is reached.",
    503: "Every engine failed (the failed job in `job`; nothing charged), or the database is unreachable.",
}


def _generation_route(operation: str, operation_id: str, summary: str, *, forms: bool = False) -> post:
    """The route of `/v1/{operation}`, with JSON requests answered by `JsonGeneration`; `forms`: it
    also takes multipart/form-data (documented as either in the OpenAPI document)."""
    return post(
        f"/v1/{operation}",
        operation_id=operation_id,
        summary=summary,
        tags=["images"],
        opt={"scope": "generate", "problems": _GENERATION_PROBLEMS, "forms": forms},
        status_code=200,
        middleware=[DefineMiddleware(JsonGeneration, operation=operation)],
        request_class=FormOrJsonRequest if forms else None,
    )


@_generation_route("text-to-image", "createTextToImage", "Generate images from a prompt")
async def text_to_image(
    *,
    services: NamedDependency[Services],
    principal: NamedDependency[Principal],
    request: Request[Any, Any, Any],
    data: JSONBody[TextToImageRequest],
    idempotency_key: IdempotencyKey = None,
    prefer: Prefer = None,
) -> Response[JobView]:
    """Make images from a prompt."""
    return await submit(
        services=services,
        principal=principal,
        request=request,
        operation="text-to-image",
        body=data,
        idempotency_key=idempotency_key,
        prefer=prefer,
    )


@_generation_route("image-to-image", "createImageToImage", "Transform an image", forms=True)
async def image_to_image(
    *,
    services: NamedDependency[Services],
    principal: NamedDependency[Principal],
    request: Request[Any, Any, Any],
    data: JSONBody[ImageToImageRequest],
    idempotency_key: IdempotencyKey = None,
    prefer: Prefer = None,
) -> Response[JobView]:
    """Make images from a prompt and an input image (`strength`: 0 keeps it, 1 ignores it).

    JSON, or multipart/form-data with the image as a file part."""
    return await submit(
        services=services,
        principal=principal,
        request=request,
        operation="image-to-image",
        body=data,
        idempotency_key=idempotency_key,
        prefer=prefer,
    )


@_generation_route("inpaint", "createInpaint", "Repaint part of an image", forms=True)
async def inpaint(
    *,
    services: NamedDependency[Services],
    principal: NamedDependency[Principal],
    request: Request[Any, Any, Any],
    data: JSONBody[InpaintRequest],
    idempotency_key: IdempotencyKey = None,
    prefer: Prefer = None,
) -> Response[JobView]:
    """Repaint the white area of `mask` in `image`.

    JSON, or multipart/form-data with the image and mask as file parts."""
    return await submit(
        services=services,
        principal=principal,
        request=request,
        operation="inpaint",
        body=data,
        idempotency_key=idempotency_key,
        prefer=prefer,
    )


routes = [text_to_image, image_to_image, inpaint]
