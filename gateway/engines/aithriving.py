"""aithriving's "basic image to image" API (SD 1.6, a mirror of Stability v1 image-to-image).

Multipart form in, `{code, message, data: {image (base64), seed}}` out, one image per request:
n images are n requests, seeds seed..seed+n-1, and the images that came out are kept even when
later ones fail ("you will not be charged for failed results").
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

import httpx
import msgspec

from gateway.config import ConfigError, EngineConfig
from gateway.domain.generation import (
    EXTENSIONS,
    STYLES,
    EngineRequest,
    EngineResult,
    EngineSpend,
    GeneratedImage,
    Operation,
    Sampler,
)
from gateway.engines.base import Capabilities, EngineError, EngineUnavailable, ProgressCallback
from gateway.engines.http import (
    decode_json,
    error_for_status,
    inspect_image,
    one_of,
    option_error,
    send,
    within_budget,
)

KIND = "aithriving"
PATH = "/api/generate/basic/imageToImage"
AUTH_HEADERS = ("Authentication", "Authorization")  # the header table's name, the example's name

# Our sampler names to the Stability-style enum the vendor documents. pndm has no counterpart.
SAMPLERS: dict[Sampler, str] = {
    "ddim": "DDIM",
    "ddpm": "DDPM",
    "dpmpp_2m": "K_DPMPP_2M",
    "dpmpp_2s_ancestral": "K_DPMPP_2S_ANCESTRAL",
    "dpm_2": "K_DPM_2",
    "dpm_2_ancestral": "K_DPM_2_ANCESTRAL",
    "euler": "K_EULER",
    "euler_ancestral": "K_EULER_ANCESTRAL",
    "heun": "K_HEUN",
    "lms": "K_LMS",
}
CLIP_GUIDANCE_PRESETS = ("FAST_BLUE", "FAST_GREEN", "NONE", "SIMPLE", "SLOW", "SLOWER", "SLOWEST")
MAX_SEED = 4294967295

CAPABILITIES = Capabilities(
    operations=frozenset({"image-to-image"}),
    min_side=320,
    max_side=1536,
    side_multiple=64,
    min_steps=10,
    max_steps=50,
    min_guidance=0.0,
    max_guidance=35.0,
    max_n=8,  # one request per image; 8 is the gateway's own limit
    samplers=frozenset(SAMPLERS),
    styles=frozenset(STYLES),  # the style_preset enum is exactly our style list
    # No negative prompt field; cfg_scale is an int (a fractional guidance goes rounded, see `received`).
    honours={
        "image-to-image": frozenset(
            {"width", "height", "steps", "guidance_scale", "seed", "strength", "sampler", "style"}
        )
    },
)

OPTIONS = {"clip_guidance_preset": one_of(CLIP_GUIDANCE_PRESETS)}


def check_options(options: Mapping[str, Any]) -> str | None:
    """Validate `engine_options.aithriving` against the vendor's documented options; the reason, or None."""
    return option_error(options, OPTIONS, KIND)


class ResultFailed(EngineUnavailable):
    """One image did not come out while the engine itself answered fine (code -1, bad image)."""


class ImageData(msgspec.Struct, frozen=True):
    """`data` of a successful answer."""

    image: str
    seed: int | None = None


class Answer(msgspec.Struct, frozen=True):
    """The response envelope: code 0 is success, -1 failure (the message says why, for humans).

    `code` is an int in the table and the example; a "0" string is taken as the same answer."""

    code: int | str
    message: str = ""
    data: ImageData | None = None


def image_strength(strength: float | None) -> float | None:
    """Our strength (higher = further from the input) as the vendor's image_strength (the inverse)."""
    if strength is None:
        return None
    return round(1.0 - strength, 6)


def form_fields(request: EngineRequest, index: int) -> dict[str, str]:
    """The text fields of the multipart form for image `index` of `request`."""
    fields = {
        "prompt": request.prompt,
        "width": str(request.width),
        "height": str(request.height),
        # Documented as an int in 0..35; a fractional guidance is rounded to the nearest step.
        "cfg_scale": str(round(request.guidance_scale)),
        "steps": str(request.steps),
    }
    strength = image_strength(request.strength)
    if strength is not None:
        fields["image_strength"] = f"{strength:g}"
    # Seed 0 means "random" to the vendor, which is also what our seed 0 gets.
    fields["seed"] = str((request.seed + index) % (MAX_SEED + 1))
    if request.sampler is not None:
        fields["sampler"] = SAMPLERS[request.sampler]
    if request.style is not None:
        fields["style_preset"] = request.style
    preset = request.engine_options.get(KIND, {}).get("clip_guidance_preset")
    if preset is not None:
        fields["clip_guidance_preset"] = preset
    return fields


def received(request: EngineRequest) -> dict[str, Any]:
    """What the form of image 0 carries, in our field names (Engine.received)."""
    fields = form_fields(request, 0)
    sent: dict[str, Any] = {
        "prompt": fields["prompt"],
        "width": int(fields["width"]),
        "height": int(fields["height"]),
        "steps": int(fields["steps"]),
        "guidance_scale": int(fields["cfg_scale"]),
    }
    if "image_strength" in fields:
        sent["strength"] = round(1.0 - float(fields["image_strength"]), 6)
    if fields["seed"] != "0":  # 0 asks the vendor for a random seed
        sent["seed"] = int(fields["seed"])
    if request.sampler is not None:
        sent["sampler"] = request.sampler
    if request.style is not None:
        sent["style"] = request.style
    return sent


def decode_answer(answer: Answer, what: str) -> tuple[bytes, int | None]:
    """The image bytes and seed of a successful answer; raise for a failed or malformed one."""
    if str(answer.code).strip() != "0":
        # Per-result failure. Only `code` is documented; the message is not classified.
        raise ResultFailed(f"{what}: generation failed (code {answer.code})")
    if answer.data is None:
        raise ResultFailed(f"{what}: success without image data")
    # "the base64 encoded image": bare base64 as in the example, or a data: URL around it.
    payload = answer.data.image
    if payload.startswith("data:"):
        payload = payload.partition(",")[2]
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ResultFailed(f"{what}: image is not valid base64") from exc
    return data, answer.data.seed


class AithrivingEngine:
    """The aithriving engine. It owns `client` and closes it in `aclose`."""

    kind = KIND
    capabilities = CAPABILITIES

    def __init__(self, name: str, config: EngineConfig, client: httpx.AsyncClient) -> None:
        unknown = set(config.options) - {"auth_header", "credits_per_image"}
        if unknown:
            raise ConfigError(f"engines.{name}.options: unknown option(s) {', '.join(sorted(unknown))}")
        self.name = name
        self.config = config
        self._client = client
        self._url = f"{config.base_url.rstrip('/')}{PATH}"
        # The docs' header table says "Authentication" while their example sends "Authorization": the
        # key goes in both (the same secret to the same host), unless `auth_header` names the one.
        configured = config.options.get("auth_header")
        self._auth_headers = (str(configured),) if configured is not None else AUTH_HEADERS
        self._credits_per_image = float(config.options.get("credits_per_image", 0.0))

    def check_options(self, options: Mapping[str, Any], operation: Operation | None = None) -> str | None:
        """Validate `engine_options.aithriving` (clip_guidance_preset)."""
        del operation  # one operation, one option table
        return check_options(options)

    def received(self, request: EngineRequest) -> dict[str, Any]:
        """What the vendor gets of `request` (no negative prompt; guidance as a whole number)."""
        return received(request)

    async def generate(self, request: EngineRequest, progress: ProgressCallback) -> EngineResult:
        """One request per image; keep what came out, stop early on a transport-level failure."""
        return await within_budget(self.config, self.name, lambda: self._run(request, progress))

    async def _run(self, request: EngineRequest, progress: ProgressCallback) -> EngineResult:
        if request.image is None:
            raise EngineUnavailable(f"{self.name}: image-to-image without an input image")
        images: list[GeneratedImage] = []
        failed: dict[int, str] = {}
        last_error: EngineError | None = None
        for index in range(request.n):
            try:
                images.append(await self._one(request, index))
            except EngineError as exc:
                if not exc.retryable:
                    raise  # the request itself is bad: no image of it can come out
                failed[index] = exc.message
                last_error = exc
                if not isinstance(exc, ResultFailed):
                    # A 5xx, 429 or timeout says the engine is struggling: keep what we have.
                    failed.update(dict.fromkeys(range(index + 1, request.n), "not attempted after an engine failure"))
                    break
            progress((index + 1) / request.n)
        if not images:
            assert last_error is not None  # n >= 1, and every image failed
            raise last_error
        spend = EngineSpend(vendor_credits=self._credits_per_image * len(images))
        return EngineResult(images=images, spend=spend, failed=failed)

    async def _one(self, request: EngineRequest, index: int) -> GeneratedImage:
        what = f"{self.name} image {index}"
        assert request.image is not None
        # The example uploads "init_image.png": a file name with the image's extension, in case the
        # vendor goes by it (the table says only "File").
        filename = f"init_image.{EXTENSIONS.get(request.image.media_type, 'png')}"
        files = {"init_image": (filename, request.image.data, request.image.media_type)}
        key = self.config.api_key
        headers = dict.fromkeys(self._auth_headers, str(key)) if key is not None else {}
        post = self._client.build_request(
            "POST", self._url, data=form_fields(request, index), files=files, headers=headers
        )
        response = await send(self._client, post, what)
        if response.status_code != 200:
            raise error_for_status(response.status_code, what, retry_after=response.headers.get("retry-after"))
        data, seed = decode_answer(decode_json(response, Answer, what), what)
        info = inspect_image(data)
        if info is None:
            raise ResultFailed(f"{what}: output is not an image")
        return GeneratedImage(
            index=index, data=data, media_type=info.media_type, seed=seed, width=info.width, height=info.height
        )

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()
