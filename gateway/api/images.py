"""POST /v1/text-to-image, /v1/image-to-image, /v1/inpaint."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from typing import Annotated, Any, NamedTuple
from uuid import UUID, uuid4

import msgspec
from litestar import Request, Response, post
from litestar.di import NamedDependency
from litestar.middleware import DefineMiddleware
from litestar.params import HeaderParameter, JSONBody
from litestar.types import ASGIApp, Receive, Scope, Send

from gateway.api.multipart import FormOrJsonRequest, is_multipart
from gateway.api.strict import is_json, strict_body
from gateway.api.views import JobView, job_view, load_job_view
from gateway.auth.guard import authorize
from gateway.auth.keys import Principal
from gateway.billing.admission import Admission, InputBlob, JobRequest, admit
from gateway.db.outage import database_unavailable
from gateway.domain.generation import HONOURABLE_FIELDS, EngineRequest, ImageInput
from gateway.domain.requests import GenerationRequest, ImageToImageRequest, InpaintRequest, TextToImageRequest
from gateway.errors import (
    PROBLEM_BASE,
    Conflict,
    FieldError,
    Problem,
    ValidationFailed,
    problem_response,
)
from gateway.routing.errors import NoEngineCanServe
from gateway.state import Services
from gateway.storage.inputs import CheckedImage, load_image
from gateway.storage.passwords import hash_password
from gateway.webhooks.urls import check_webhook_url

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


def _engine_params(operation: str, body: GenerationRequest, seed: int, width: int, height: int) -> dict[str, Any]:
    params: dict[str, Any] = {
        "operation": operation,
        "prompt": body.prompt,
        "negative_prompt": body.negative_prompt,
        "width": width,
        "height": height,
        "steps": body.steps,
        "guidance_scale": body.guidance_scale,
        "seed": seed,
        "n": body.n,
        "style": body.style,
        "sampler": body.sampler,
        "model": body.model,
        "output_format": body.output_format,
        "engine_options": body.engine_options or {},
    }
    if isinstance(body, ImageToImageRequest | InpaintRequest):
        params["strength"] = body.strength
        params["resize_mode"] = body.resize_mode
    params["explicit"] = explicit_fields(body)
    return params


def explicit_fields(body: GenerationRequest) -> list[str]:
    """The HONOURABLE_FIELDS the tenant set: a value other than the documented default (a field
    left at its default cannot be told from one sent as the default), and both sides when a
    size was asked for through width, height or aspect_ratio."""
    defaults = {f.name: f.default for f in msgspec.structs.fields(body)}
    explicit = [
        name
        for name in HONOURABLE_FIELDS
        if name in defaults and name not in ("width", "height") and getattr(body, name) != defaults[name]
    ]
    if body.width is not None or body.height is not None or body.aspect_ratio is not None:
        explicit += ["width", "height"]
    return sorted(explicit)


async def _inputs(services: Services, body: GenerationRequest) -> dict[str, CheckedImage]:
    if not isinstance(body, ImageToImageRequest | InpaintRequest):
        return {}
    s = services.settings
    client = services.extras["fetch_client"]
    load = {
        "client": client,
        "max_bytes": s.max_input_bytes,
        "max_pixels": s.max_input_pixels,
        "allow_hosts": frozenset(s.fetch_allow_hosts),
    }
    images = {"image": await load_image(body.image, "image", **load)}
    if isinstance(body, InpaintRequest):
        mask = await load_image(body.mask, "mask", **load)
        if (mask.width, mask.height) != (images["image"].width, images["image"].height):
            raise ValidationFailed.field(
                "mask",
                f"mask is {mask.width}x{mask.height}; it must match the image ({images['image'].width}x"
                f"{images['image'].height})",
            )
        images["mask"] = mask
    return images


def _request_hash(body: bytes, operation: str) -> bytes:
    return hashlib.sha256(operation.encode() + b"\0" + body).digest()


async def _replay(services: Services, principal: Principal, key: str, digest: bytes) -> JobView | None:
    """The job a previous request with this Idempotency-Key created, or None for a new key."""
    async with services.pool.acquire() as conn:
        row = await conn.fetchrow(
            """SELECT request_hash, job_id FROM idempotency_keys
               WHERE tenant_id = $1 AND key = $2 AND created_at > now() - make_interval(secs => $3)""",
            principal.tenant_id,
            key,
            services.settings.idempotency_ttl_s,
        )
        if row is None:
            return None
        if row["request_hash"] != digest:
            raise Conflict("This Idempotency-Key was used with a different request body.")
        if row["job_id"] is None:
            raise Conflict("A request with this Idempotency-Key is still being processed.")
        view = await load_job_view(conn, row["job_id"], principal.tenant)
    assert view is not None
    if view.state in ("queued", "running"):
        raise Conflict("A request with this Idempotency-Key is still being processed.", job_id=str(view.id))
    return view


async def _claim_key(services: Services, principal: Principal, key: str, digest: bytes, job_id: UUID) -> None:
    async with services.pool.acquire() as conn:
        inserted = await conn.fetchval(
            """INSERT INTO idempotency_keys (tenant_id, key, request_hash, job_id) VALUES ($1, $2, $3, NULL)
               ON CONFLICT (tenant_id, key) DO UPDATE SET request_hash = EXCLUDED.request_hash,
                   created_at = now(), job_id = NULL
               WHERE idempotency_keys.created_at <= now() - make_interval(secs => $4)
               RETURNING true""",
            principal.tenant_id,
            key,
            digest,
            services.settings.idempotency_ttl_s,
        )
    if not inserted:
        raise Conflict("A request with this Idempotency-Key is still being processed.")


class Submitted(NamedTuple):
    """A generation as `generate` leaves it: finished, or still queued/running (`pending`)."""

    view: JobView
    pending: bool
    replayed: bool = False


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


async def generate(
    *,
    services: Services,
    principal: Principal,
    request: Request[Any, Any, Any],
    operation: str,
    body: GenerationRequest,
    idempotency_key: str | None,
    prefer: str | None,
    fingerprint: bytes | None = None,
) -> Submitted:
    """Validate, price, reserve, and run (sync, bounded wait) or queue (async) one generation.

    `fingerprint` is what Idempotency-Key compares: the raw body by default; callers whose raw
    body is not stable across retries (multipart boundaries are random) pass their own.
    """
    if fingerprint is None:
        # A form's boundary changes on every send: compare what it decoded to instead.
        fingerprint = msgspec.json.encode(body) if is_multipart(request) else await request.body()
    digest = _request_hash(fingerprint, operation)
    if idempotency_key:
        previous = await _replay(services, principal, idempotency_key, digest)
        if previous is not None:
            return Submitted(previous, pending=previous.state in ("queued", "running"), replayed=True)
    width, height = body.size()
    seed = body.seed if body.seed is not None else secrets.randbelow(2**32 - body.n)
    params = _engine_params(operation, body, seed, width, height)
    job_id = uuid4()
    # Refuse at once what no engine can serve (422 naming the constraint), before any money moves.
    probe = msgspec.convert({**params, "job_id": str(job_id)}, EngineRequest)
    images = await _inputs(services, body)
    if body.webhook_url is not None:
        await check_webhook_url(body.webhook_url, "webhook_url", frozenset(services.settings.fetch_allow_hosts))
    if images:
        probe = msgspec.structs.replace(
            probe,
            image=ImageInput(
                data=b"",
                media_type=images["image"].media_type,
                width=images["image"].width,
                height=images["image"].height,
                url="https://signed.invalid" if services.extras.get("signs_inputs") else None,
            ),
        )
    try:
        services.router.check(probe, body.engines)
    except NoEngineCanServe as exc:
        # The fields no routed engine would honour as asked, each named (errors[].field).
        errors = [FieldError(field, f"no routed engine honours it: {why}") for field, why in exc.fields.items()]
        raise ValidationFailed(str(exc), errors=errors or None, reasons=exc.reasons) from exc
    if idempotency_key:
        await _claim_key(services, principal, idempotency_key, digest, job_id)
    blobs: list[InputBlob] = []
    run_async = body.run_async or "respond-async" in (prefer or "")
    runner = services.runner
    try:
        for role, image in images.items():
            key = f"inputs/{job_id}/{role}"
            await services.blobs.put(key, image.data, image.media_type)
            blobs.append(InputBlob(role, key, image.media_type, image.width, image.height))
        password_hash = await hash_password(body.download_password) if body.download_password else None
        spec = JobRequest(
            job_id=job_id,
            operation=operation,
            params=params,
            width=width,
            height=height,
            steps=body.steps,
            n=body.n,
            model=body.model,
            allowed_engines=body.engines,
            password_hash=password_hash,
            webhook_url=body.webhook_url,
            inputs=blobs,
            deadline_s=max(services.settings.sync_wait_s, 600.0),
            lease_owner=None if run_async else runner.owner,
            lease_s=services.settings.lease_s,
        )
        admission = await admit(services.pool, principal, spec, prices=services.prices, batcher=runner.admissions)
    except BaseException as exc:
        if isinstance(exc, Exception) and database_unavailable(exc):
            # The admission may have committed before the connection died: a job it made must
            # not run on behind a 503, and its key is freed, once the database is back.
            _undo_after_outage(services, principal, job_id, idempotency_key)
            raise
        # Nothing was admitted: free the key so a retry (after a top-up, say) can go through. Also
        # after an unexpected error (a blob store failure, a dropped client), or the key would
        # answer "still being processed" for the whole idempotency TTL.
        if idempotency_key:
            async with services.pool.acquire() as conn:
                await conn.execute(
                    "DELETE FROM idempotency_keys WHERE tenant_id = $1 AND key = $2 AND job_id IS NULL",
                    principal.tenant_id,
                    idempotency_key,
                )
        for blob in blobs:
            await services.blobs.delete(blob.blob_key)
        raise
    try:
        return await _after_admission(services, principal, admission, job_id, idempotency_key, run_async=run_async)
    except Exception as exc:
        if database_unavailable(exc):
            # The answer is a 503: the job it admitted must not run on and be charged.
            _undo_after_outage(services, principal, job_id, idempotency_key)
        raise


def _undo_after_outage(services: Services, principal: Principal, job_id: UUID, idempotency_key: str | None) -> None:
    """Once the database is back: free the Idempotency-Key (the 503 told the client to retry, and
    the retry must not meet "still being processed") and fail the job, at no charge."""

    async def release_key(conn: Any) -> None:
        if idempotency_key:
            await conn.execute(
                "DELETE FROM idempotency_keys WHERE tenant_id = $1 AND key = $2 AND (job_id IS NULL OR job_id = $3)",
                principal.tenant_id,
                idempotency_key,
                job_id,
            )

    services.runner.fail_after_outage(job_id, release_key)


async def _after_admission(
    services: Services,
    principal: Principal,
    admission: Admission,
    job_id: UUID,
    idempotency_key: str | None,
    *,
    run_async: bool,
) -> Submitted:
    """Record the idempotency key, then wait for a sync job (bounded) or answer a queued one."""
    runner = services.runner
    if idempotency_key:
        async with services.pool.acquire() as conn:
            await conn.execute(
                "UPDATE idempotency_keys SET job_id = $3 WHERE tenant_id = $1 AND key = $2",
                principal.tenant_id,
                idempotency_key,
                job_id,
            )
    if not run_async:
        if admission.job is None:  # a sync admission returns the job's row; its absence is a bug
            raise RuntimeError(f"job {job_id} was admitted without its row")
        task = runner.spawn(admission.job)
        try:
            finished = await asyncio.wait_for(asyncio.shield(task), timeout=services.settings.sync_wait_s)
        except TimeoutError:
            run_async = True  # still running: answer like an async request; the runner finishes it
            await runner.make_durable(job_id)  # the 202 hands the job out, so it must survive a crash
        else:
            if finished is not None:  # the settlement's own view of the job: no read back
                return Submitted(job_view(*finished), pending=False)
    async with services.pool.acquire() as conn:
        view = await load_job_view(conn, job_id, principal.tenant)
    assert view is not None
    return Submitted(view, pending=run_async)


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
