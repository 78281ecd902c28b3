"""The shared HTTP boundary: Retry-After, status classification, image sniffing."""

from __future__ import annotations

import email.utils
import io

import pytest
from PIL import Image

from gateway.engines.base import (
    EngineCredentialsRefused,
    EngineRateLimited,
    EngineRejected,
    EngineTimeout,
    EngineUnavailable,
)
from gateway.engines.http import error_for_status, inspect_image, parse_retry_after
from tests.fakes.images import png


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after(email.utils.formatdate(1_000_030, usegmt=True), now=1_000_000) == pytest.approx(30)
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("-5") == 0.0


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, EngineRejected),
        (422, EngineRejected),
        (401, EngineCredentialsRefused),
        (403, EngineCredentialsRefused),
        (402, EngineUnavailable),
        (404, EngineUnavailable),
        (429, EngineRateLimited),
        (500, EngineUnavailable),
        (503, EngineUnavailable),
        (504, EngineTimeout),
    ],
)
def test_statuses_map_to_error_types(status: int, kind: type[Exception]) -> None:
    assert type(error_for_status(status, "call")) is kind


def test_images_are_recognised_by_content_not_by_claims() -> None:
    info = inspect_image(png(16, 8))
    assert info is not None
    assert (info.media_type, info.width, info.height) == ("image/png", 16, 8)
    assert inspect_image(b"<html>not an image</html>") is None


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "1", "I;16"])
@pytest.mark.parametrize("size", [(1, 1), (64, 64), (640, 3)])
def test_a_png_reads_the_size_pillow_reads(mode: str, size: tuple[int, int]) -> None:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    info = inspect_image(buffer.getvalue())
    assert info is not None
    assert (info.media_type, info.width, info.height) == ("image/png", *size)


def test_other_formats_and_damaged_png_headers_are_left_to_pillow() -> None:
    for fmt, media_type in (("JPEG", "image/jpeg"), ("WEBP", "image/webp"), ("GIF", "image/gif")):
        buffer = io.BytesIO()
        Image.new("RGB", (5, 7)).save(buffer, format=fmt)
        info = inspect_image(buffer.getvalue())
        assert info is not None
        assert (info.media_type, info.width, info.height) == (media_type, 5, 7)
    good = png(16, 8)
    assert inspect_image(good[:20]) is None  # cut inside the header
    assert inspect_image(good[:16] + b"\xff\xff\xff\xff" + good[20:]) is None  # width changed, CRC does not match
