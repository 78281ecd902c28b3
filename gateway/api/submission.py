"""A generation's submission, shared by /v1 and the OpenAI-compatible routes: check the request,
replay or claim its Idempotency-Key, store its inputs, admit it (price and reservation in one
statement), then run it within the sync wait or hand it to the runner."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import secrets
from typing import Any, NamedTuple
from uuid import UUID, uuid4

import msgspec
from litestar import Request

from gateway.api.multipart import is_multipart
from gateway.api.views import JobView, job_view, load_job_view
from gateway.auth.keys import Principal
from gateway.billing.admission import Admission, InputBlob, JobRequest, admit
from gateway.db import idempotency as iq
from gateway.db.outage import database_unavailable
from gateway.domain.generation import (
    HONOURABLE_FIELDS,
    GenerationParams,
    ImageInput,
    Operation,
    ResizeMode,
    operation_named,
)
from gateway.domain.requests import GenerationRequest, ImageToImageRequest, InpaintRequest
from gateway.errors import Conflict, FieldError, ValidationFailed
from gateway.routing.errors import NoEngineCanServe
from gateway.state import Services
from gateway.storage.inputs import CheckedImage, load_image
from gateway.storage.passwords import hash_password
from gateway.webhooks.urls import check_webhook_url


def generation_params(operation: Operation, body: GenerationRequest, seed: int) -> GenerationParams:
    """The body's parameters, resolved: the final size, a concrete seed, every default applied."""
    width, height = body.size()
    strength: float | None = None
    resize_mode: ResizeMode = "simple"
    if isinstance(body, ImageToImageRequest | InpaintRequest):
        strength, resize_mode = body.strength, body.resize_mode
    return GenerationParams(
        operation=operation,
        prompt=body.prompt,
        negative_prompt=body.negative_prompt,
        width=width,
        height=height,
        steps=body.steps,
        guidance_scale=body.guidance_scale,
        strength=strength,
        seed=seed,
        n=body.n,
        style=body.style,
        sampler=body.sampler,
        model=body.model,
        output_format=body.output_format,
        resize_mode=resize_mode,
        engine_options=body.engine_options or {},
        explicit=explicit_fields(body),
    )


@functools.cache
def _defaults(struct: type[GenerationRequest]) -> dict[str, Any]:
    # Once per request type: msgspec.structs.fields resolves the class's annotations each call, which
    # was a fifth of the gateway's CPU per sync request (py-spy, bench/gateway.py --modes hot).
    return {f.name: f.default for f in msgspec.structs.fields(struct)}


def explicit_fields(body: GenerationRequest) -> frozenset[str]:
    """The HONOURABLE_FIELDS the tenant set: a value other than the documented default (a field
    left at its default cannot be told from one sent as the default), and both sides when a
    size was asked for through width, height or aspect_ratio."""
    defaults = _defaults(type(body))
    explicit = {
        name
        for name in HONOURABLE_FIELDS
        if name in defaults and name not in ("width", "height") and getattr(body, name) != defaults[name]
    }
    if body.width is not None or body.height is not None or body.aspect_ratio is not None:
        explicit |= {"width", "height"}
    return frozenset(explicit)


async def _inputs(services: Services, body: GenerationRequest) -> dict[str, CheckedImage]:
    if not isinstance(body, ImageToImageRequest | InpaintRequest):
        return {}
    s = services.settings
    load = functools.partial(
        load_image,
        client=services.fetch_client,
        max_bytes=s.max_input_bytes,
        max_pixels=s.max_input_pixels,
        allow_hosts=frozenset(s.fetch_allow_hosts),
    )
    images = {"image": await load(body.image, "image")}
    if isinstance(body, InpaintRequest):
        mask = await load(body.mask, "mask")
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
        record = await iq.find(conn, principal.tenant, key, services.settings.idempotency_ttl_s)
        if record is None:
            return None
        if record.request_hash != digest:
            raise Conflict("This Idempotency-Key was used with a different request body.")
        if record.job_id is None:
            raise Conflict("A request with this Idempotency-Key is still being processed.")
        view = await load_job_view(conn, record.job_id, principal.tenant)
    assert view is not None
    if view.state in ("queued", "running"):
        raise Conflict("A request with this Idempotency-Key is still being processed.", job_id=str(view.id))
    return view


async def _claim_key(services: Services, principal: Principal, key: str, digest: bytes, job_id: UUID) -> None:
    async with services.pool.acquire() as conn:
        claimed = await iq.claim(conn, principal.tenant, key, digest, services.settings.idempotency_ttl_s)
    if not claimed:
        raise Conflict("A request with this Idempotency-Key is still being processed.")


class Submitted(NamedTuple):
    """A generation as `generate` leaves it: finished, or still queued/running (`pending`)."""

    view: JobView
    pending: bool
    replayed: bool = False


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
    seed = body.seed if body.seed is not None else secrets.randbelow(2**32 - body.n)
    params = generation_params(operation_named(operation), body, seed)
    job_id = uuid4()
    images = await _inputs(services, body)
    if body.webhook_url is not None:
        await check_webhook_url(body.webhook_url, "webhook_url", frozenset(services.settings.fetch_allow_hosts))
    # Refuse at once what no engine can serve (422 naming the constraint), before any money moves. The
    # routes look at the input's size and whether it can be sent by URL, not at its bytes.
    placeholder = None
    if images:
        placeholder = ImageInput(
            data=b"",
            media_type=images["image"].media_type,
            width=images["image"].width,
            height=images["image"].height,
            url="https://signed.invalid" if services.signs_inputs else None,
        )
    probe = params.engine_request(str(job_id), image=placeholder)
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
            params=params.stored(),
            width=params.width,
            height=params.height,
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
                await iq.release(conn, principal.tenant, idempotency_key)
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
            await iq.release(conn, principal.tenant, idempotency_key, job_id=job_id)

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
            await iq.attach(conn, principal.tenant, idempotency_key, job_id)
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
