"""Inputs for vendors that fetch them by URL, with the filesystem store: the gateway serves each
at a signed URL of its own (public_base_url) while the job runs, and at no other time."""

from __future__ import annotations

import base64
import os
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import Gateway, gateway_settings, vendor_urls
from tests.e2e.live import LiveGateway
from tests.e2e.test_generation_billing import audit_clean, balance
from tests.fakes.images import png


@pytest.fixture
def gateway_with_public_url(
    database_url: str, data_dir: Path, fake_api2convert: Any, fake_qolaba: Any, fake_aithriving: Any
) -> Iterator[Callable[..., str]]:
    """Start a live gateway whose public_base_url is its own address (image-to-image on Qolaba)."""
    vendors = vendor_urls(fake_api2convert, fake_qolaba, fake_aithriving)
    started: list[LiveGateway] = []

    def start() -> str:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        settings = gateway_settings(
            database_url, data_dir, vendors, public_base_url=base, routes={"image-to-image": ["qolaba"]}
        )
        server = LiveGateway(settings, sock=sock)
        started.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in started:
            server.stop()


async def test_qolaba_fetches_its_input_from_a_signed_url_that_dies_with_the_job(
    gateway: Gateway, gateway_with_public_url: Callable[..., str], fake_qolaba: Any, data_dir: Path
) -> None:
    base = gateway_with_public_url()
    _, key = await gateway.tenant(credits=10)
    fake_qolaba.fetch_inputs = True
    image = png(512, 512)
    body = {"prompt": "the same, at night", "image": "data:image/png;base64," + base64.b64encode(image).decode()}
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        response = await client.post("/v1/image-to-image", json=body, headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200, response.text
        job = response.json()
        assert job["state"] == "succeeded"
        assert job["engine"] == "qolaba"

        [(url, status, fetched)] = fake_qolaba.fetched
        assert status == 200
        assert fetched == image
        parts = urlsplit(url)
        assert f"{parts.scheme}://{parts.netloc}" == base
        assert parts.path == f"/v1/blobs/inputs/{job['id']}/image"

        # The job has finished: the same URL, signature and all, no longer serves the image.
        after = await client.get(url)
        assert after.status_code == 410
        assert after.headers["content-type"].startswith("application/problem+json")
        tampered = await client.get(url.replace("signature=", "signature=0"))
        assert tampered.status_code == 403
        other_key = await client.get(url.replace("/image?", "/mask?"))
        assert other_key.status_code == 403

    key_file = data_dir / "blob-signing.key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert len(key_file.read_text().strip()) == 64
    assert (await balance(gateway, key))["balance"] == 10 - job["charged"]
    await audit_clean(gateway)


async def test_without_s3_or_public_base_url_the_422_says_what_to_set(make_gateway: Callable[..., Any]) -> None:
    gw = await make_gateway(routes={"image-to-image": ["qolaba"]})
    _, key = await gw.tenant(credits=10)
    body = {"prompt": "x", "image": "data:image/png;base64," + base64.b64encode(png(512, 512)).decode()}
    response = await gw.client.post("/v1/image-to-image", json=body, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "set public_base_url" in detail
    assert "S3 blob store" in detail
    assert (await balance(gw, key))["balance"] == 10
