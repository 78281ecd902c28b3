"""Re-encoding output images into the format the request asked for (`output_format`)."""

from __future__ import annotations

import io
import logging

from PIL import Image

from gateway.domain.generation import MEDIA_TYPES, PIL_FORMATS, OutputFormat

log = logging.getLogger(__name__)


def needs_conversion(media_type: str, output_format: OutputFormat) -> bool:
    """Whether `to_output_format` has work to do, so callers can skip a thread hop when it has none."""
    return media_type != MEDIA_TYPES[output_format]


def to_output_format(data: bytes, media_type: str, output_format: OutputFormat) -> tuple[bytes, str]:
    """The image as `output_format`; unchanged when the engine already produced that format.

    JPEG has no alpha channel, so transparent pixels are flattened onto white rather than
    turning black, which is what a viewer would have shown for them.
    """
    if not needs_conversion(media_type, output_format):
        return data, media_type
    target = MEDIA_TYPES[output_format]
    buffer = io.BytesIO()
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            out_img: Image.Image = img
            if output_format == "jpeg" and img.mode not in ("RGB", "L"):
                rgba = img.convert("RGBA")
                out_img = Image.new("RGB", rgba.size, (255, 255, 255))
                out_img.paste(rgba, mask=rgba.getchannel("A"))
            options = {"quality": 92} if output_format in ("jpeg", "webp") else {}
            out_img.save(buffer, format=PIL_FORMATS[output_format], **options)
    except (OSError, ValueError, Image.DecompressionBombError):
        # The engine's bytes are not an image we can read: deliver them as the engine labelled
        # them rather than lose an image the tenant is charged for.
        log.warning("could not convert a %s output to %s; kept as is", media_type, output_format)
        return data, media_type
    return buffer.getvalue(), target
