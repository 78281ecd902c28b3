"""Qolaba's ML API: text-to-image, image-to-image and inpainting, queued with `celery: true`.

Inputs travel by URL only (`image`, `mask_url`), so the engine needs the gateway's signed URLs.
Every answer, the task-status one included, is the envelope
`{time_required, error, error_data, input, output, app_id, task_id, status}`. Status values are
not documented (reference/vendors.md §2.1, [GAP]), so success is a non-empty `output`; failure
is a non-empty `error`/`error_data`, HTTP 500, or a `status` that names an end without a result
(Celery's FAILURE and REVOKED and the usual spellings of failed/cancelled/error, any case), and
a finished `status` (SUCCESS, completed, done) with no output is a failure too: polling on would
only run into the timeout. Any other status means "keep polling".
Where the two doc sites disagree on ranges, the stricter set applies.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any

import httpx
import msgspec

from gateway.config import ConfigError, EngineConfig
from gateway.domain.generation import EngineRequest, EngineResult, EngineSpend, GeneratedImage, Operation
from gateway.engines.base import Capabilities, EngineError, EngineUnavailable, ProgressCallback
from gateway.engines.http import (
    decode_json,
    download,
    error_for_status,
    inspect_image,
    json_post,
    one_of,
    option_error,
    poll_delays,
    send,
    within_budget,
)

KIND = "qolaba"

# The docs spell the image-to-image path in two ways; each operation starts with its own page's
# spelling and, on a 404 or 405 (no such route: nothing was queued), tries the other one and keeps it.
PATHS = {"text-to-image": "/getTextToImage", "image-to-image": "/getImageToImage", "inpaint": "/getImagetoImage"}
OTHER_SPELLING = {"/getImageToImage": "/getImagetoImage", "/getImagetoImage": "/getImageToImage"}
STATUS_PATH = "/getImage"
# The inpainting page's header table says "Bearer <token>", the image-to-image page's only
# "Authorization: string". Bearer goes first; on a 401/403 the bare token is tried once and kept if it
# passes. `auth_scheme` pins one.
AUTH_SCHEMES = ("bearer", "raw")
# The image-to-image page's table names the input URL `image`, its own description "the file_url
# parameter". Both cannot be sent (a server refusing unknown fields would reject every request), so
# `image` (also the inpainting page's name) goes, and `image_field = "file_url"` switches.
IMAGE_FIELDS = ("image", "file_url")
# engines.NAME.options beyond the request's engine_options (app_id, inference_type defaults).
ENGINE_OPTIONS = {
    "auth_scheme": one_of(AUTH_SCHEMES),
    "image_field": one_of(IMAGE_FIELDS),
    "credits_per_image": lambda v: None if isinstance(v, int | float) and v >= 0 else "must be a number >= 0",
    "max_download_bytes": lambda v: None if isinstance(v, int) and v > 0 else "must be a positive integer",
}

# The app_id table of the image-to-image page, under the names our `model` field takes.
MODELS = {
    "turbo-vision": "ap-Jf2aKs8dPqXzRb1Yv6hN7L",
    "qolaba-style": "ap-vcbg1l7bBuScbDuUOk3Shl",
    "cartoon": "ap-Rgtph3LFS9rRT5X7XREazo",
    "realistic": "ap-nM68b4WwQ6VzdNwwXBrOHE",
    "anime": "ap-Zj2zfXKq52zvpib7jGqYFp",
    "sdxl": "ap-eRSyl0imzrUrbvgdAYwDTl",
}
DEFAULT_APP_ID = MODELS["sdxl"]
INFERENCE_TYPES = ("a10g", "a100", "h100")
_APP_ID = re.compile(r"^ap-[A-Za-z0-9]{8,64}$")

CAPABILITIES = Capabilities(
    operations=frozenset({"text-to-image", "image-to-image", "inpaint"}),
    min_side=512,
    max_side=1536,
    side_multiple=64,
    min_steps=1,  # no steps parameter: the model decides, any value is accepted and ignored
    max_steps=150,
    min_guidance=2.0,
    max_guidance=25.0,
    max_n=4,
    samplers=frozenset(),  # no sampler parameter
    styles=frozenset(),  # style comes from the model (app_id), not a preset
    models=frozenset(MODELS),
    needs_input_url=True,
    # No steps or seed parameter on any page; the inpainting page has no size, guidance or strength;
    # the size only with the SDXL app_id (the default), see `received`.
    honours={
        "text-to-image": frozenset({"negative_prompt", "width", "height", "guidance_scale", "model"}),
        "image-to-image": frozenset({"negative_prompt", "width", "height", "guidance_scale", "strength", "model"}),
        "inpaint": frozenset({"negative_prompt", "model"}),
    },
)


def _app_id(value: Any) -> str | None:
    if isinstance(value, str) and _APP_ID.match(value):
        return None
    return "must be an app_id such as ap-eRSyl0imzrUrbvgdAYwDTl"


OPTIONS = {"app_id": _app_id, "inference_type": one_of(INFERENCE_TYPES)}


def check_options(options: Mapping[str, Any]) -> str | None:
    """Validate `engine_options.qolaba` against the vendor's documented options; the reason, or None."""
    return option_error(options, OPTIONS, KIND)


class Envelope(msgspec.Struct, frozen=True):
    """Qolaba's answer envelope. Types beyond "string" are undocumented, hence `Any`."""

    output: Any = None
    error: Any = None
    error_data: Any = None
    task_id: Any = None
    status: Any = None


def request_body(request: EngineRequest, defaults: Mapping[str, Any], image_field: str = "image") -> dict[str, Any]:
    """The JSON body for `request`; `defaults` are the engine's configured app_id/inference_type,
    `image_field` the name the input URL goes under."""
    vendor = {**defaults, **request.engine_options.get(KIND, {})}
    app_id = vendor.get("app_id", DEFAULT_APP_ID)
    if request.model is not None:
        app_id = MODELS[request.model]
    body: dict[str, Any] = {
        "app_id": app_id,
        "prompt": request.prompt,
        "batch": request.n,
        "celery": True,  # queued mode: long generations do not hold an HTTP request open
    }
    if request.negative_prompt:
        body["negative_prompt"] = request.negative_prompt
    if request.image is not None:
        body[image_field] = request.image.url
    if request.operation == "inpaint":
        # The inpainting page documents no guidance, size or GPU choice: the mask and image
        # decide. Its convention (white = repaint, same size as the image) is ours already.
        body["mask_url"] = request.mask.url if request.mask is not None else None
        return body
    body["guidance_scale"] = request.guidance_scale
    body["width"] = request.width
    body["height"] = request.height
    if "inference_type" in vendor:
        body["inference_type"] = vendor["inference_type"]
    if request.operation == "image-to-image" and request.strength is not None:
        body["strength"] = request.strength  # same direction as ours: 1 disregards the input
    return body


# Undocumented: Celery's terminal states, and the spellings other task APIs use, compared in upper case.
FAILED_STATUSES = frozenset({"FAILURE", "FAILED", "FAIL", "ERROR", "REVOKED", "CANCELED", "CANCELLED", "REJECTED"})
FINISHED_STATUSES = frozenset({"SUCCESS", "SUCCEEDED", "COMPLETED", "COMPLETE", "DONE", "FINISHED"})


def received(request: EngineRequest, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """What the request body carries, in our field names (Engine.received)."""
    body = request_body(request, defaults)
    sent: dict[str, Any] = {"prompt": body["prompt"]}
    for ours, theirs in (
        ("negative_prompt", "negative_prompt"),
        ("width", "width"),
        ("height", "height"),
        ("guidance_scale", "guidance_scale"),
        ("strength", "strength"),
    ):
        if theirs in body:
            sent[ours] = body[theirs]
    if request.model is not None:
        sent["model"] = request.model  # as its app_id
    if body["app_id"] != MODELS["sdxl"]:
        # "This parameter is only applicable for the SDXL API": other models ignore the size.
        sent.pop("width", None)
        sent.pop("height", None)
    return sent


def _filled(value: Any) -> bool:
    return value not in (None, "", [], {})


def _status(envelope: Envelope) -> str:
    return envelope.status.strip().upper() if isinstance(envelope.status, str) else ""


def envelope_failure(envelope: Envelope, what: str) -> EngineError | None:
    """The failure an envelope reports (non-empty `error` or `error_data`, a failed `status`, or a
    finished `status` without output), or None while the task may still produce images."""
    if _filled(envelope.error) or _filled(envelope.error_data):
        # The vendor's error text is not classified (undocumented); it is the task failing.
        return EngineUnavailable(f"{what}: task failed")
    status = _status(envelope)
    if status in FAILED_STATUSES:
        return EngineUnavailable(f"{what}: task failed (status {status})")
    if status in FINISHED_STATUSES and not _filled(envelope.output):
        return EngineUnavailable(f"{what}: task finished (status {status}) without output")
    return None


def output_refs(envelope: Envelope) -> list[str]:
    """The output entries (URLs or data URLs) of a finished envelope; [] while not finished."""
    output = envelope.output
    if not _filled(output):
        return []
    if isinstance(output, str):
        return [output]
    if isinstance(output, list) and all(isinstance(item, str) for item in output):
        return [item for item in output if item]
    raise EngineUnavailable(f"{KIND}: malformed output in the answer")


def decode_data_url(ref: str) -> bytes | None:
    """The bytes of a `data:...;base64,` reference, or None if `ref` is not one."""
    if not ref.startswith("data:"):
        return None
    _, _, payload = ref.partition(",")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return b""


class QolabaEngine:
    """The Qolaba engine. It owns `client` and closes it in `aclose`."""

    kind = KIND
    capabilities = CAPABILITIES

    def __init__(self, name: str, config: EngineConfig, client: httpx.AsyncClient) -> None:
        configured = {k: v for k, v in config.options.items() if k in OPTIONS}
        problem = option_error(config.options, {**OPTIONS, **ENGINE_OPTIONS}, KIND)
        if problem:
            raise ConfigError(f"engines.{name}.options: {problem.removeprefix(f'engine_options.{KIND}.')}")
        scheme = config.options.get("auth_scheme")
        self.name = name
        self.config = config
        self._client = client
        self._base = config.base_url.rstrip("/")
        self._defaults = configured
        self._credits_per_image = float(config.options.get("credits_per_image", 0.0))
        self._max_bytes = int(config.options.get("max_download_bytes", 64 * 1024 * 1024))
        self._pinned_scheme = scheme is not None
        self._scheme = str(scheme or "bearer")
        self._paths: dict[str, str] = {}  # a documented spelling -> the one this vendor answered on
        self._image_field = str(config.options.get("image_field", "image"))

    def check_options(self, options: Mapping[str, Any], operation: Operation | None = None) -> str | None:
        """Validate `engine_options.qolaba` (app_id, inference_type)."""
        del operation  # the same options on every page
        return check_options(options)

    def received(self, request: EngineRequest) -> dict[str, Any]:
        """What Qolaba gets of `request` (never steps or seed; for inpaint no size, guidance, strength)."""
        return received(request, self._defaults)

    def _headers(self, scheme: str) -> dict[str, str]:
        if self.config.api_key is None:
            return {}
        key = str(self.config.api_key)
        return {"Authorization": f"Bearer {key}" if scheme == "bearer" else key}

    async def _post(self, path: str, body: dict[str, Any], what: str) -> httpx.Response:
        """POST with our credentials, trying the other documented form once if the first is refused."""
        post = json_post(self._client, f"{self._base}{path}", body, self._headers(self._scheme))
        response = await send(self._client, post, what)
        if response.status_code in (401, 403) and not self._pinned_scheme and self.config.api_key is not None:
            other = next(s for s in AUTH_SCHEMES if s != self._scheme)
            post = json_post(self._client, f"{self._base}{path}", body, self._headers(other))
            retry = await send(self._client, post, what)
            if retry.status_code not in (401, 403):
                self._scheme = other
            response = retry
        return response

    async def _call(self, path: str, body: dict[str, Any], what: str) -> Envelope:
        documented = path
        path = self._paths.get(documented, documented)
        response = await self._post(path, body, what)
        if response.status_code in (404, 405) and path in OTHER_SPELLING:
            retry = await self._post(OTHER_SPELLING[path], body, what)
            if retry.status_code not in (404, 405):
                self._paths[documented] = OTHER_SPELLING[path]
            response = retry
        if response.status_code != 200:
            # A 500 carries the same envelope; its error text changes nothing: the task failed.
            raise error_for_status(response.status_code, what, retry_after=response.headers.get("retry-after"))
        envelope = decode_json(response, Envelope, what)
        failure = envelope_failure(envelope, what)
        if failure is not None:
            raise failure
        return envelope

    async def generate(self, request: EngineRequest, progress: ProgressCallback) -> EngineResult:
        """Submit the queued task, poll /getImage until it has output, download the images."""
        return await within_budget(self.config, self.name, lambda: self._run(request, progress))

    async def _run(self, request: EngineRequest, progress: ProgressCallback) -> EngineResult:
        envelope = await self._call(
            PATHS[request.operation],
            request_body(request, self._defaults, self._image_field),
            f"{self.name} submit",
        )
        refs = output_refs(envelope)
        if not refs:
            if not isinstance(envelope.task_id, str) or not envelope.task_id:
                raise EngineUnavailable(f"{self.name}: queued answer without a task_id")
            refs = await self._poll(envelope.task_id, progress)
        progress(0.9)
        images, failed = await self._fetch(request, refs[: request.n])
        if not images:
            raise EngineUnavailable(f"{self.name}: the task produced no usable image")
        progress(1.0)
        spend = EngineSpend(vendor_credits=self._credits_per_image * len(images))
        return EngineResult(images=images, spend=spend, failed=failed)

    async def _poll(self, task_id: str, progress: ProgressCallback) -> list[str]:
        delays = poll_delays(self.config)
        polls = 0
        while True:
            await anext(delays)
            polls += 1
            # No progress figure is documented; creep towards 0.8 so clients see liveness.
            progress(min(0.8, 0.1 * polls))
            envelope = await self._call(STATUS_PATH, {"id": task_id}, f"{self.name} task status")
            refs = output_refs(envelope)
            if refs:
                return refs

    async def _fetch(self, request: EngineRequest, refs: list[str]) -> tuple[list[GeneratedImage], dict[int, str]]:
        images: list[GeneratedImage] = []
        failed: dict[int, str] = {}
        for index, ref in enumerate(refs):
            data = decode_data_url(ref)
            if data is None:
                try:
                    data = await download(self._client, ref, f"{self.name} download", max_bytes=self._max_bytes)
                except EngineError as exc:
                    failed[index] = exc.message
                    continue
            info = inspect_image(data)
            if info is None:
                failed[index] = "output is not an image"
                continue
            images.append(
                GeneratedImage(index=index, data=data, media_type=info.media_type, width=info.width, height=info.height)
            )
        for index in range(len(refs), request.n):
            failed[index] = "the vendor returned fewer images than asked"
        return images, failed

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()
