"""What a gateway on a cloud blob store must do, whichever store: the store-specific tests call these
and then check the store itself (its keys, its signed URLs)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import Gateway
from tests.e2e.test_generation_billing import audit_clean, auth
from tests.fakes.images import png


async def generate_and_download(gw: Gateway) -> tuple[str, bytes]:
    """A sync text-to-image that succeeds and serves its PNG: (the job's id, the file's bytes)."""
    _, key = await gw.tenant(credits=10)
    response = await gw.client.post(
        "/v1/text-to-image", json={"prompt": "a lighthouse", "width": 512, "height": 512}, headers=auth(key)
    )
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["state"] == "succeeded"
    file = await gw.client.get(job["results"][0]["url"])
    assert file.status_code == 200
    assert file.content.startswith(b"\x89PNG")
    return job["id"], file.content


async def nothing_local_and_audit_clean(gw: Gateway, data_dir: Path) -> None:
    """The blobs went to the store, not the data folder, and the ledger audit finds nothing."""
    assert not (data_dir / "blobs").exists()
    await audit_clean(gw)


async def input_url_given_to_qolaba(gw: Gateway, fake_qolaba: Any) -> str:
    """An image-to-image on Qolaba, which takes inputs only by URL: the URL the store signed for it,
    checked to fetch the very input image."""
    _, key = await gw.tenant(credits=10)
    source = png(64, 64)
    response = await gw.client.post(
        "/v1/image-to-image",
        json={"prompt": "as a watercolour", "image": base64.b64encode(source).decode()},
        headers=auth(key),
    )
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "succeeded"
    [submit] = [call for call in fake_qolaba.calls if call.path == "/getImageToImage"]
    url: str = submit.body["image"]
    async with httpx.AsyncClient() as client:
        fetched = await client.get(url)
    assert fetched.status_code == 200
    assert fetched.content == source
    return url
