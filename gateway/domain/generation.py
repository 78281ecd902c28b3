"""The normalized generation vocabulary shared by the public API, the engines and the GPU service.

Everything here is pure data: no I/O, no imports from the rest of the package.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal

import msgspec

Operation = Literal["text-to-image", "image-to-image", "inpaint"]
OPERATIONS: tuple[Operation, ...] = ("text-to-image", "image-to-image", "inpaint")


def operation_named(name: str) -> Operation:
    """The operation called `name`; ValueError for a name that is none (the routes pass only these)."""
    for operation in OPERATIONS:
        if operation == name:
            return operation
    raise ValueError(f"no operation is called {name!r}")


# Our sampler names. Each engine maps them to its own vocabulary (diffusers schedulers,
# Stability-style K_* names, ...) and declares which ones it can serve.
Sampler = Literal[
    "euler",
    "euler_ancestral",
    "heun",
    "lms",
    "ddim",
    "ddpm",
    "pndm",
    "dpm_2",
    "dpm_2_ancestral",
    "dpmpp_2m",
    "dpmpp_2s_ancestral",
]
SAMPLERS: tuple[Sampler, ...] = (
    "euler",
    "euler_ancestral",
    "heun",
    "lms",
    "ddim",
    "ddpm",
    "pndm",
    "dpm_2",
    "dpm_2_ancestral",
    "dpmpp_2m",
    "dpmpp_2s_ancestral",
)

# The style presets the vendors share (Stability's list, which aithriving mirrors).
Style = Literal[
    "3d-model",
    "analog-film",
    "anime",
    "cinematic",
    "comic-book",
    "digital-art",
    "enhance",
    "fantasy-art",
    "isometric",
    "line-art",
    "low-poly",
    "modeling-compound",
    "neon-punk",
    "origami",
    "photographic",
    "pixel-art",
    "tile-texture",
]
STYLES: tuple[Style, ...] = (
    "3d-model",
    "analog-film",
    "anime",
    "cinematic",
    "comic-book",
    "digital-art",
    "enhance",
    "fantasy-art",
    "isometric",
    "line-art",
    "low-poly",
    "modeling-compound",
    "neon-punk",
    "origami",
    "photographic",
    "pixel-art",
    "tile-texture",
)

AspectRatio = Literal["1:1", "3:2", "4:3", "4:5", "9:16", "16:9", "21:9"]
ResizeMode = Literal["simple", "crop", "fill"]
OutputFormat = Literal["png", "jpeg", "webp"]


class ImageFormat(msgspec.Struct, frozen=True):
    """One image format the gateway takes in and hands out, under each name it goes by."""

    name: OutputFormat  # our `output_format`
    media_type: str
    extension: str  # of file names: stored outputs, vendor uploads
    pil_format: str  # Pillow's `Image.format`


# The one table of image formats; the mappings below are views of it. PNG comes first: it is the
# default output, and the order is the one the OpenAPI document lists media types in.
IMAGE_FORMATS: tuple[ImageFormat, ...] = (
    ImageFormat("png", "image/png", "png", "PNG"),
    ImageFormat("jpeg", "image/jpeg", "jpg", "JPEG"),
    ImageFormat("webp", "image/webp", "webp", "WEBP"),
)
IMAGE_MEDIA_TYPES: tuple[str, ...] = tuple(f.media_type for f in IMAGE_FORMATS)
MEDIA_TYPES: Mapping[OutputFormat, str] = MappingProxyType({f.name: f.media_type for f in IMAGE_FORMATS})
PIL_FORMATS: Mapping[OutputFormat, str] = MappingProxyType({f.name: f.pil_format for f in IMAGE_FORMATS})
# media type -> file name extension
EXTENSIONS: Mapping[str, str] = MappingProxyType({f.media_type: f.extension for f in IMAGE_FORMATS})
# Pillow's format name -> media type
MEDIA_TYPES_OF_PIL: Mapping[str, str] = MappingProxyType({f.pil_format: f.media_type for f in IMAGE_FORMATS})


class ImageInput(msgspec.Struct, frozen=True, kw_only=True):
    """An input image (init image or mask) after the gateway fetched, decoded and checked it.

    `url` is an expiring signed URL to the same bytes in our blob store, set when the gateway
    has a public base URL configured; engines whose vendor only accepts URLs need it.
    Masks are normalized to the convention "white = repaint, black = keep", same size as the image.
    """

    data: bytes
    media_type: str
    width: int
    height: int
    url: str | None = None


class GenerationParams(msgspec.Struct, frozen=True, kw_only=True):
    """A generation's parameters, resolved once when it is submitted and stored with its job.

    `width`/`height` are final (aspect_ratio already turned into pixels). `seed` is concrete:
    image i of the request uses `seed + i` so results are reproducible per image.
    `engine_options` holds vendor-specific options for the engine kind it is keyed by.
    """

    operation: Operation
    prompt: str
    negative_prompt: str | None = None
    width: int
    height: int
    steps: int
    guidance_scale: float
    strength: float | None = None  # 0..1, higher = further from the input image
    seed: int
    n: int
    style: Style | None = None
    sampler: Sampler | None = None
    model: str | None = None
    output_format: OutputFormat = "png"
    resize_mode: ResizeMode = "simple"
    engine_options: dict[str, Any] = msgspec.field(default_factory=dict)
    # The fields of HONOURABLE_FIELDS the tenant set (a size through width, height or aspect_ratio):
    # an engine that would drop or change one of them is not used for this request.
    explicit: frozenset[str] = frozenset()

    def stored(self) -> dict[str, Any]:
        """The JSON object kept in the job's row (jobs.params); `from_stored` reads it back."""
        # Sorted, so `explicit` is stored in one order whatever the set's iteration order.
        stored: dict[str, Any] = msgspec.to_builtins(self, order="sorted")
        return stored

    @classmethod
    def from_stored(cls, stored: dict[str, Any]) -> GenerationParams:
        """The parameters `stored` wrote; a row written before a field existed gets its default."""
        return msgspec.convert(stored, cls)

    def engine_request(
        self, job_id: str, *, image: ImageInput | None = None, mask: ImageInput | None = None
    ) -> EngineRequest:
        """These parameters as the engines receive them for job `job_id`, with its input images.

        The one place a generation turns into an EngineRequest: the submission checks the routes
        with it, and the runner runs the job with it."""
        # Field by field from the parameters' own list: EngineRequest extends it, so none is left out.
        fields = {name: getattr(self, name) for name in GenerationParams.__struct_fields__}
        return EngineRequest(job_id=job_id, image=image, mask=mask, **fields)


class EngineRequest(GenerationParams, frozen=True, kw_only=True):
    """One generation as an engine receives it: fully resolved, every default applied, inputs loaded."""

    job_id: str
    image: ImageInput | None = None
    mask: ImageInput | None = None


# The request fields whose fate an engine declares (Capabilities.honours) and reports (Engine.received).
HONOURABLE_FIELDS: tuple[str, ...] = (
    "negative_prompt",
    "width",
    "height",
    "steps",
    "guidance_scale",
    "seed",
    "strength",
    "style",
    "sampler",
    "model",
)


class GeneratedImage(msgspec.Struct, frozen=True, kw_only=True):
    """One produced image. `index` is its position in the request (0..n-1)."""

    index: int
    data: bytes
    media_type: str
    seed: int | None = None
    width: int | None = None
    height: int | None = None


class EngineSpend(msgspec.Struct, frozen=True, kw_only=True):
    """What the engine reported it spent: the cost of goods recorded beside the charge."""

    vendor_credits: float = 0.0
    gpu_seconds: float = 0.0


class EngineResult(msgspec.Struct, frozen=True, kw_only=True):
    """The images an engine produced. May hold fewer than `n` images: only those are charged.

    `failed` maps the index of each image that did not come out to a short reason.
    """

    images: list[GeneratedImage]
    spend: EngineSpend = EngineSpend()
    failed: dict[int, str] = msgspec.field(default_factory=dict)


AttemptOutcome = Literal["succeeded", "partial", "rejected", "failed", "rate_limited", "timeout", "skipped"]


class EngineAttempt(msgspec.Struct, frozen=True, kw_only=True):
    """One try of one engine for a job, as recorded on the job and shown to the tenant."""

    engine: str
    outcome: AttemptOutcome
    latency_ms: int
    error_class: str | None = None
    error: str | None = None
    images: int = 0
    # What the engine sent its backend, in our field names (Engine.received); None when not tried.
    received: dict[str, Any] | None = None
