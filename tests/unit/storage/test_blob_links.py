"""The gateway's own signed input URLs: what they sign, when they stop working, where the key lives."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from gateway.storage.links import BlobLinks, load_or_create_key

KEY = "inputs/0b8f7c1e-7f0e-4c55-9d2a-3f1b2c4d5e6f/image"


def parts(url: str) -> tuple[str, int, str]:
    split = urlsplit(url)
    query = parse_qs(split.query)
    return split.path, int(query["expires"][0]), query["signature"][0]


def test_a_signed_url_is_valid_until_it_expires_and_only_for_its_key() -> None:
    now = [1_000.0]
    links = BlobLinks(b"k" * 32, "https://gw.example/", clock=lambda: now[0])
    url = links.url(KEY, expires_at=1_060.2)
    path, expires, signature = parts(url)
    assert path == f"/v1/blobs/{KEY}"
    assert url.startswith(f"https://gw.example/v1/blobs/{KEY}?")
    assert expires == 1_061
    assert links.valid(KEY, expires, signature)
    assert not links.valid(KEY.replace("image", "mask"), expires, signature)
    assert not links.valid(KEY, expires + 60, signature)  # a later expiry is not signed
    now[0] = 1_062.0
    assert not links.valid(KEY, expires, signature)


def test_another_key_signs_differently() -> None:
    url = BlobLinks(b"a" * 32, "https://gw.example").url(KEY, 2_000_000_000)
    _, expires, signature = parts(url)
    assert not BlobLinks(b"b" * 32, "https://gw.example").valid(KEY, expires, signature)


def test_only_job_inputs_are_ever_signed() -> None:
    links = BlobLinks(b"k" * 32, "https://gw.example")
    with pytest.raises(ValueError, match="only input blobs"):
        links.url("outputs/x/0.png", 2_000_000_000)
    assert not links.valid("outputs/x/0.png", 2_000_000_000, "0" * 64)


def test_the_key_is_generated_once_into_the_data_folder_unless_configured(tmp_path: Path) -> None:
    first = load_or_create_key(tmp_path, None)
    assert load_or_create_key(tmp_path, None) == first
    assert len(first) == 64
    assert stat.S_IMODE(os.stat(tmp_path / "blob-signing.key").st_mode) == 0o600
    assert load_or_create_key(tmp_path, "from-the-environment") == b"from-the-environment"
