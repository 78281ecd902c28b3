"""The shared HTTP boundary: Retry-After, status classification, image sniffing."""

from __future__ import annotations

import email.utils

import pytest

from gateway.engines.base import EngineRateLimited, EngineRejected, EngineTimeout, EngineUnavailable
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
        (401, EngineUnavailable),
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
