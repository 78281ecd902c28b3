"""The public request bodies. Constraints live here, so validation and the OpenAPI schema agree."""

from __future__ import annotations

import math
from typing import Annotated, Any

import msgspec

from gateway.domain.generation import AspectRatio, OutputFormat, ResizeMode, Sampler, Style

Prompt = Annotated[str, msgspec.Meta(min_length=1, max_length=4000, description="What to draw.")]
NegativePrompt = Annotated[str, msgspec.Meta(max_length=4000, description="What to keep out of the image.")]
Side = Annotated[
    int, msgspec.Meta(ge=64, le=2048, multiple_of=8, description="Pixels; a multiple of 8. Overrides aspect_ratio.")
]
Steps = Annotated[int, msgspec.Meta(ge=1, le=150, description="Denoising steps.")]
Guidance = Annotated[float, msgspec.Meta(ge=0, le=35, description="Classifier-free guidance scale.")]
Strength = Annotated[
    float, msgspec.Meta(ge=0, le=1, description="How far from the input image to go: 0 keeps it, 1 ignores it.")
]
Seed = Annotated[int, msgspec.Meta(ge=0, le=4_294_967_295, description="Image i of the request uses seed + i.")]
Count = Annotated[int, msgspec.Meta(ge=1, le=8, description="How many images to make; each one is charged.")]
DownloadPassword = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[ -~]{1,1000}$",
        description="Printable ASCII, up to 1000 characters. Required to download the outputs.",
    ),
]
WebhookUrl = Annotated[str, msgspec.Meta(pattern=r"^https?://", max_length=2048)]
EngineName = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
ModelName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._/-]{1,200}$")]
ImageRef = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        description="An https URL, a data: URI, or plain base64 of a PNG, JPEG or WebP image.",
    ),
]

ASPECT_RATIOS: dict[str, tuple[int, int]] = {
    "1:1": (1, 1),
    "3:2": (3, 2),
    "4:3": (4, 3),
    "4:5": (4, 5),
    "9:16": (9, 16),
    "16:9": (16, 9),
    "21:9": (21, 9),
}
DEFAULT_SIDE = 512


class _Common(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    prompt: Prompt
    negative_prompt: NegativePrompt | None = None
    width: Side | None = None
    height: Side | None = None
    aspect_ratio: AspectRatio | None = None
    steps: Steps = 30
    guidance_scale: Guidance = 7.5
    seed: Seed | None = None
    n: Count = 1
    style: Style | None = None
    sampler: Sampler | None = None
    model: ModelName | None = None
    output_format: OutputFormat = "png"
    download_password: DownloadPassword | None = None
    webhook_url: WebhookUrl | None = None
    engines: Annotated[list[EngineName], msgspec.Meta(min_length=1, max_length=16)] | None = None
    engine_options: dict[str, dict[str, Any]] | None = None
    # `async` is a Python keyword; the JSON name stays `async`.
    run_async: bool = msgspec.field(default=False, name="async")

    def size(self) -> tuple[int, int]:
        """Final pixel size: explicit width/height win; else aspect_ratio at about 512x512 pixels."""
        if self.width is not None or self.height is not None:
            return self.width or self.height or DEFAULT_SIDE, self.height or self.width or DEFAULT_SIDE
        if self.aspect_ratio is None:
            return DEFAULT_SIDE, DEFAULT_SIDE
        rw, rh = ASPECT_RATIOS[self.aspect_ratio]
        # Keep the pixel count near 512x512 and both sides multiples of 64 (what every engine takes).
        scale = math.sqrt(DEFAULT_SIDE * DEFAULT_SIDE / (rw * rh))
        return max(64, round(rw * scale / 64) * 64), max(64, round(rh * scale / 64) * 64)


class TextToImageRequest(_Common, kw_only=True, forbid_unknown_fields=True):
    """Make images from a prompt."""


class ImageToImageRequest(_Common, kw_only=True, forbid_unknown_fields=True):
    """Make images from a prompt and an input image."""

    image: ImageRef
    strength: Strength = 0.6
    resize_mode: ResizeMode = "simple"


class InpaintRequest(_Common, kw_only=True, forbid_unknown_fields=True):
    """Repaint the white area of `mask` in `image`."""

    image: ImageRef
    mask: Annotated[str, msgspec.Meta(min_length=1, description="Same size as image; white = repaint, black = keep.")]
    strength: Strength = 1.0
    resize_mode: ResizeMode = "simple"


GenerationRequest = TextToImageRequest | ImageToImageRequest | InpaintRequest
