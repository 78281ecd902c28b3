"""The one image-format table (gateway/domain/generation.py) agrees with Pillow and with itself."""

from __future__ import annotations

import io
import typing

import pytest
from PIL import Image

from gateway.domain.generation import EXTENSIONS, IMAGE_FORMATS, MEDIA_TYPES, ImageFormat, OutputFormat
from gateway.engines.http import inspect_image
from gateway.storage.formats import to_output_format
from gateway.storage.inputs import decode_image


def test_every_output_format_has_exactly_one_row() -> None:
    assert sorted(f.name for f in IMAGE_FORMATS) == sorted(typing.get_args(OutputFormat))
    assert len({f.media_type for f in IMAGE_FORMATS}) == len(IMAGE_FORMATS)


@pytest.mark.parametrize("fmt", IMAGE_FORMATS, ids=lambda f: f.name)
def test_each_format_is_written_and_recognised_under_its_media_type(fmt: ImageFormat) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buffer, format=fmt.pil_format)
    png = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(png, format="PNG")
    converted, media_type = to_output_format(png.getvalue(), "image/png", fmt.name)
    assert media_type == MEDIA_TYPES[fmt.name] == fmt.media_type
    assert Image.open(io.BytesIO(converted)).format == fmt.pil_format
    assert decode_image(buffer.getvalue(), "image", max_pixels=64).media_type == fmt.media_type
    info = inspect_image(buffer.getvalue())
    assert info is not None
    assert info.media_type == fmt.media_type
    assert EXTENSIONS[fmt.media_type] == fmt.extension
