"""api2convert (online-convert.com) jobs API: text-to-image and image-inpaint operations.

One gateway request becomes one job with `n` conversions (the API has no image-count option),
conversion i carrying seed + i. The job runs with `fail_on_conversion_error: false` so that a
failed conversion leaves the others' outputs (a partial result) instead of failing the job.

Where the prompt and the mask go is not documented anywhere we hold. Checked: the option tables
of both targets (vendor-docs/000 image-inpaint, 001 text-to-image) list no prompt, negative_prompt
or mask option in the alphabetical slots where they would appear; reference/vendors.md §1.9 marks
it [GAP]; the official SDK's OpenAPI 2.0.1 has `Conversion.options` as a free-form object and
`InputFile` with no role field. What the docs do fix, this adapter follows: every other option's
name and range, inputs as `input[]` entries of type `remote` (our expiring signed URL) or the
documented `base64`. The prompt goes as conversion options `prompt`/`negative_prompt` and the mask
as the second input, after the image; both stay marked `x-gateway-unverified` in
openapi/vendors/api2convert.yaml until `GET /v2/conversions?category=operation&target=...` is
read from the live API.

The vendor's output links need no account key, so each job's outputs are locked with a
`download_password` the engine makes up per attempt and sends back as `x-oc-download-password`
when downloading. The tenant's own download password never leaves the gateway
(reference/vendors.md §6.5).
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import Mapping
from typing import Any

import httpx

from gateway.config import ConfigError, EngineConfig
from gateway.domain.generation import (
    EngineRequest,
    EngineResult,
    EngineSpend,
    GeneratedImage,
    ImageInput,
    Operation,
    Style,
)
from gateway.engines.api2convert_jobs import (
    STATUS_PROGRESS,
    TERMINAL,
    Job,
    http_failure,
    job_failure,
    job_outputs,
)
from gateway.engines.base import Capabilities, EngineError, EngineUnavailable, ProgressCallback
from gateway.engines.http import (
    decode_json,
    download,
    inspect_image,
    is_bool,
    json_post,
    one_of,
    option_error,
    poll_delays,
    send,
    within_budget,
)

KIND = "api2convert"

TARGETS = {"text-to-image": "text-to-image", "inpaint": "image-inpaint"}

# The text-to-image style enum is anime/artistic/generic/photorealistic; our shared style names
# map onto it where the meaning matches, the rest are not offered (Capabilities.styles).
STYLES: dict[Style, str] = {"anime": "anime", "photographic": "photorealistic", "digital-art": "artistic"}

CAPABILITIES = Capabilities(
    operations=frozenset({"text-to-image", "inpaint"}),  # image-to-image is not a documented target
    min_side=64,
    max_side=5120,
    side_multiple=1,
    min_steps=1,
    max_steps=60,
    min_guidance=1.0,
    max_guidance=30.0,
    max_n=8,
    samplers=frozenset(),  # no sampler option: a request naming one cannot be honoured here
    styles=frozenset(STYLES),
    # width/height only without engine_options.api2convert.aspect_ratio (the vendor ignores them
    # beside it, so they are not sent); seed from 1 (0 is the vendor's random); style only mapped,
    # not replaced by a raw engine_options style. See `received`.
    honours={
        "text-to-image": frozenset({"negative_prompt", "width", "height", "steps", "guidance_scale", "seed", "style"}),
        "inpaint": frozenset(
            {"negative_prompt", "width", "height", "steps", "guidance_scale", "seed", "style", "strength"}
        ),
    },
)

MAX_SEED = 4294967295


def _is_text(limit: int) -> Any:
    def check(value: Any) -> str | None:
        if isinstance(value, str) and 1 <= len(value) <= limit:
            return None
        return f"must be a string of 1..{limit} characters"

    return check


OPTIONS = {
    "preset": _is_text(255),
    "style": _is_text(255),  # a raw vendor style, overriding the mapped one
    "aspect_ratio": one_of(("1:1", "3:2", "4:3", "4:5", "9:16", "16:9", "21:9")),
    "allow_multiple_outputs": is_bool,
}


# The text-to-image page gives `style` an enum; the image-inpaint page only a pattern (any text).
TEXT_TO_IMAGE_STYLES = ("anime", "artistic", "generic", "photorealistic")


def check_options(options: Mapping[str, Any], operation: Operation | None = None) -> str | None:
    """Validate `engine_options.api2convert` against the vendor's documented options for `operation`
    (all operations' tables when None); the reason, or None."""
    problem = option_error(options, OPTIONS, KIND)
    if problem is None and operation == "text-to-image" and "style" in options:
        problem = option_error({"style": options["style"]}, {"style": one_of(TEXT_TO_IMAGE_STYLES)}, KIND)
        if problem is not None:
            problem += " for text-to-image"
    return problem


def input_file(image: ImageInput, filename: str) -> dict[str, Any]:
    """An `input[]` entry: the signed URL when we have one, else the documented base64 type."""
    if image.url is not None:
        return {"type": "remote", "source": image.url}
    return {
        "type": "base64",
        "source": base64.b64encode(image.data).decode("ascii"),
        "filename": filename,
        "content_type": image.media_type,
    }


def conversion_options(request: EngineRequest, index: int, download_password: str | None = None) -> dict[str, Any]:
    """The `options` of conversion `index` (image `index` of the request), its outputs locked with
    `download_password` when given."""
    vendor = request.engine_options.get(KIND, {})
    options: dict[str, Any] = {
        "prompt": request.prompt,
        "cfg_scale": request.guidance_scale,
        "num_inference_steps": request.steps,
        # Several conversions each yield a file; without this they come back zipped together.
        "allow_multiple_outputs": vendor.get("allow_multiple_outputs", True),
    }
    if request.negative_prompt:
        options["negative_prompt"] = request.negative_prompt
    if "aspect_ratio" in vendor:
        # The vendor ignores aspect_ratio when width or height is set, so send only the ratio.
        options["aspect_ratio"] = vendor["aspect_ratio"]
    else:
        options["width"] = request.width
        options["height"] = request.height
    seed = request.seed + index
    # The documented seed minimum is 1; seed 0 is left to the vendor's random choice.
    if 1 <= seed <= MAX_SEED:
        options["seed"] = seed
    style = vendor.get("style") or (STYLES.get(request.style) if request.style else None)
    if style:
        options["style"] = style
    if "preset" in vendor:
        options["preset"] = vendor["preset"]
    if download_password is not None:
        options["download_password"] = download_password
    if request.operation == "inpaint":
        options["resize_mode"] = request.resize_mode
        if request.strength is not None:
            # Same direction as ours: 0 keeps the image, 1 is unrelated to it.
            options["denoising_strength"] = request.strength
    return options


def received(request: EngineRequest) -> dict[str, Any]:
    """What conversion 0 carries, in our field names (Engine.received)."""
    options = conversion_options(request, 0)
    sent: dict[str, Any] = {
        "prompt": options["prompt"],
        "steps": options["num_inference_steps"],
        "guidance_scale": options["cfg_scale"],
    }
    for ours, theirs in (
        ("negative_prompt", "negative_prompt"),
        ("width", "width"),
        ("height", "height"),
        ("seed", "seed"),
        ("strength", "denoising_strength"),
    ):
        if theirs in options:
            sent[ours] = options[theirs]
    if request.style is not None and options.get("style") == STYLES.get(request.style):
        sent["style"] = request.style  # mapped, not replaced by a raw engine_options style
    return sent


def job_body(request: EngineRequest, download_password: str | None = None) -> dict[str, Any]:
    """The POST /v2/jobs body for `request`: one conversion per requested image."""
    target = TARGETS[request.operation]
    body: dict[str, Any] = {
        "process": True,
        "fail_on_conversion_error": False,
        "conversion": [
            {"category": "operation", "target": target, "options": conversion_options(request, i, download_password)}
            for i in range(request.n)
        ],
    }
    inputs = []
    if request.image is not None:
        inputs.append(input_file(request.image, "image.png"))
    if request.mask is not None:
        inputs.append(input_file(request.mask, "mask.png"))
    if inputs:
        body["input"] = inputs
    return body


class Api2ConvertEngine:
    """The api2convert engine. It owns `client` and closes it in `aclose`."""

    kind = KIND
    capabilities = CAPABILITIES

    def __init__(self, name: str, config: EngineConfig, client: httpx.AsyncClient) -> None:
        unknown = set(config.options) - {"max_download_bytes"}
        if unknown:
            raise ConfigError(f"engines.{name}.options: unknown option(s) {', '.join(sorted(unknown))}")
        self.name = name
        self.config = config
        self._client = client
        # The pages write the host bare and the path as /v2/jobs; the SDK's OpenAPI document has the
        # server as https://api.api2convert.com/v2 and the path as /jobs. Either base URL an operator
        # copies ends up at the one documented /v2/jobs, never at /v2/v2/jobs.
        self._base = config.base_url.rstrip("/").removesuffix("/v2")
        self._max_bytes = int(config.options.get("max_download_bytes", 64 * 1024 * 1024))
        self._cleanup: set[asyncio.Task[None]] = set()

    def check_options(self, options: Mapping[str, Any], operation: Operation | None = None) -> str | None:
        """Validate `engine_options.api2convert` against the documented conversion options."""
        return check_options(options, operation)

    def received(self, request: EngineRequest) -> dict[str, Any]:
        """What api2convert gets of `request` (no size beside an aspect_ratio option, no seed 0)."""
        return received(request)

    def _headers(self) -> dict[str, str]:
        if self.config.api_key is None:
            return {}
        # The pages send X-Oc-Api-Key; the SDK names X-Api2convert-Api-Key canonical and the X-Oc-*
        # names permanent aliases. Both carry the same key to the same host.
        key = str(self.config.api_key)
        return {"X-Oc-Api-Key": key, "X-Api2convert-Api-Key": key}

    async def generate(self, request: EngineRequest, progress: ProgressCallback) -> EngineResult:
        """Create the job, poll it to a terminal status, download the outputs."""
        job_id: list[str] = []
        try:
            return await within_budget(self.config, self.name, lambda: self._run(request, progress, job_id))
        except BaseException:
            if job_id:
                self._cancel_later(job_id[0])
            raise

    async def _run(self, request: EngineRequest, progress: ProgressCallback, job_id: list[str]) -> EngineResult:
        what = f"{self.name} create job"
        password = secrets.token_urlsafe(24)  # printable ASCII, within the documented ^[ -~]{0,1000}$
        post = json_post(self._client, f"{self._base}/v2/jobs", job_body(request, password), self._headers())
        response = await send(self._client, post, what)
        if response.status_code not in (200, 201):
            # 204 ("the JSON body is empty") is our bug, not the tenant's; http_failure says 5xx-like.
            raise http_failure(response, what)
        job = decode_json(response, Job, what)
        job_id.append(job.id)
        job = await self._wait(job, progress)
        job_id.clear()  # terminal: nothing left to cancel
        if job.status.code != "completed":
            raise job_failure(job)
        uris, failed = job_outputs(job, request.n)
        images = await self._download_all(request, uris, failed, password)
        spend = EngineSpend(vendor_credits=float(job.spent))
        if not images:
            raise EngineUnavailable(
                f"{self.name}: job completed without usable outputs", spend_vendor_credits=spend.vendor_credits
            )
        progress(1.0)
        return EngineResult(images=images, spend=spend, failed=failed)

    async def _wait(self, job: Job, progress: ProgressCallback) -> Job:
        what = f"{self.name} poll job"
        delays = poll_delays(self.config)
        while job.status.code not in TERMINAL:
            progress(STATUS_PROGRESS.get(job.status.code, 0.05))
            await anext(delays)
            get = self._client.build_request("GET", f"{self._base}/v2/jobs/{job.id}", headers=self._headers())
            response = await send(self._client, get, what)
            if response.status_code != 200:
                raise http_failure(response, what)
            job = decode_json(response, Job, what)
        return job

    async def _download_all(
        self, request: EngineRequest, uris: dict[int, str], failed: dict[int, str], password: str
    ) -> list[GeneratedImage]:
        # The option tables name x-oc-download-password, the SDK X-Api2convert-Download-Password.
        headers = {"x-oc-download-password": password, "x-api2convert-download-password": password}
        images = []
        for index in sorted(uris):
            try:
                data = await download(
                    self._client, uris[index], f"{self.name} download", headers=headers, max_bytes=self._max_bytes
                )
            except EngineError as exc:
                failed[index] = exc.message
                continue
            info = inspect_image(data)
            if info is None:
                failed[index] = "output is not an image"
                continue
            seed = request.seed + index
            images.append(
                GeneratedImage(
                    index=index,
                    data=data,
                    media_type=info.media_type,
                    seed=seed if 1 <= seed <= MAX_SEED else None,
                    width=info.width,
                    height=info.height,
                )
            )
        return images

    def _cancel_later(self, job_id: str) -> None:
        # The attempt is over (timeout or cancellation); stop the vendor's job so it stops
        # spending, without making the caller wait for the answer.
        task = asyncio.get_running_loop().create_task(self._cancel(job_id))
        self._cleanup.add(task)
        task.add_done_callback(self._cleanup.discard)

    async def _cancel(self, job_id: str) -> None:
        delete = self._client.build_request("DELETE", f"{self._base}/v2/jobs/{job_id}", headers=self._headers())
        try:
            async with asyncio.timeout(5):
                await send(self._client, delete, f"{self.name} cancel job")
        except (EngineError, TimeoutError):
            return  # best effort: the job expires on the vendor's side anyway

    async def aclose(self) -> None:
        """Wait briefly for pending job cancellations, then close the HTTP client."""
        if self._cleanup:
            await asyncio.wait(set(self._cleanup), timeout=5)
        await self._client.aclose()
