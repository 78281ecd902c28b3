"""Input decoding and output encoding for the pipelines (Pillow only)."""

from __future__ import annotations

import io

from PIL import Image, ImageOps, UnidentifiedImageError

from gateway.domain.generation import MEDIA_TYPES, PIL_FORMATS, OutputFormat, ResizeMode


class BadInputImage(ValueError):
    """The bytes are not an image Pillow can decode."""


def decode_input(data: bytes, width: int, height: int, resize_mode: ResizeMode, *, mask: bool = False) -> Image.Image:
    """Decode an init image (RGB) or mask (L) and bring it to `width` x `height`.

    simple: stretch; crop: scale to cover, then centre-crop; fill: scale to fit, then pad (a mask
    is padded black, i.e. the padding is kept, not repainted).
    """
    try:
        with Image.open(io.BytesIO(data)) as opened:
            image = opened.convert("L" if mask else "RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise BadInputImage(f"cannot decode image: {exc}") from exc
    size = (width, height)
    if image.size == size:
        return image
    if resize_mode == "crop":
        return ImageOps.fit(image, size, Image.Resampling.LANCZOS)
    if resize_mode == "fill":
        return ImageOps.pad(image, size, Image.Resampling.LANCZOS, color=0)
    return image.resize(size, Image.Resampling.LANCZOS)


def encode_output(image: Image.Image, output_format: OutputFormat) -> bytes:
    """Encode a generated image; JPEG and WebP at quality 95."""
    buffer = io.BytesIO()
    if output_format == "png":
        image.save(buffer, format="PNG")
    else:
        image.convert("RGB").save(buffer, format=PIL_FORMATS[output_format], quality=95)
    return buffer.getvalue()


def media_type(output_format: OutputFormat) -> str:
    """The MIME type of `output_format`."""
    return MEDIA_TYPES[output_format]
