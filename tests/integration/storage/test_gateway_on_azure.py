"""A gateway whose `[storage]` is an Azure container (Azurite): inputs and outputs live there, not on disk."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import obstore
import pytest
from obstore.store import AzureStore

from gateway.db.audit import run_audit
from tests.conftest import Gateway
from tests.fakes.images import png
from tests.integration.storage.azurite import ACCOUNT, ACCOUNT_KEY, Azurite

# A variable of our own choosing, so the test proves the loader reads the one `[storage]` names.
CREDENTIALS = {"TEST_AZURE_KEY": ACCOUNT_KEY}


# Whichever test comes first npm-installs Azurite into the cache (up to 300 s on a fresh machine).
pytestmark = pytest.mark.timeout(300 + 120)


def _storage(azurite: Azurite, container: str) -> dict[str, Any]:
    return {
        "kind": "azure",
        "endpoint_url": azurite.account_url,
        "bucket": container,
        "account_name": ACCOUNT,
        "account_key_env": "TEST_AZURE_KEY",
        "prefix": "gw-test/",
        "presign_ttl_s": 120,
    }


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_job_on_an_azure_gateway_stores_the_image_in_the_container_and_serves_it(
    make_gateway: Callable[..., Awaitable[Gateway]], azurite: Azurite, container: str, data_dir: Path
) -> None:
    gw = await make_gateway(CREDENTIALS, storage=_storage(azurite, container))
    _, key = await gw.tenant(credits=10)

    response = await gw.client.post(
        "/v1/text-to-image", json={"prompt": "a lighthouse", "width": 512, "height": 512}, headers=_auth(key)
    )

    assert response.status_code == 200, response.text
    job = response.json()
    assert job["state"] == "succeeded"
    file = await gw.client.get(job["results"][0]["url"])
    assert file.status_code == 200
    assert file.content.startswith(b"\x89PNG")
    # Read back outside the gateway: output keys carry a per-run token, under the configured prefix.
    raw = AzureStore(
        container,
        endpoint=azurite.account_url,
        account_name=ACCOUNT,
        account_key=ACCOUNT_KEY,
        client_options={"allow_http": True},
    )
    listed = [meta["path"] async for chunk in obstore.list(raw, f"gw-test/outputs/{job['id']}/") for meta in chunk]
    (name,) = listed
    assert name.endswith("-0.png")
    assert bytes(await (await obstore.get_async(raw, name)).bytes_async()) == file.content
    assert not (data_dir / "blobs").exists()
    async with gw.pool.acquire() as conn:
        assert await run_audit(conn) == {}


async def test_vendor_that_fetches_inputs_by_url_gets_a_sas_url(
    make_gateway: Callable[..., Awaitable[Gateway]], azurite: Azurite, container: str, fake_qolaba: Any
) -> None:
    # Qolaba takes input images only by URL: with Azure storage that URL is a SAS signed by the store.
    gw = await make_gateway(CREDENTIALS, storage=_storage(azurite, container), routes={"image-to-image": ["qolaba"]})
    _, key = await gw.tenant(credits=10)
    source = png(64, 64)

    response = await gw.client.post(
        "/v1/image-to-image",
        json={"prompt": "as a watercolour", "image": base64.b64encode(source).decode()},
        headers=_auth(key),
    )

    assert response.status_code == 200, response.text
    assert response.json()["state"] == "succeeded"
    [submit] = [call for call in fake_qolaba.calls if call.path == "/getImageToImage"]
    url = submit.body["image"]
    assert url.startswith(f"{azurite.account_url}/{container}/gw-test/inputs/")
    assert "sig=" in url
    async with httpx.AsyncClient() as client:
        fetched = await client.get(url)
    assert fetched.status_code == 200
    assert fetched.content == source
