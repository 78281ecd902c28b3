"""A gateway whose `[storage]` is an Azure container (Azurite): inputs and outputs live there, not on disk."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import obstore
import pytest
from obstore.store import AzureStore

from tests.conftest import Gateway
from tests.integration.storage.azurite import ACCOUNT, ACCOUNT_KEY, Azurite
from tests.integration.storage.gateway_scenarios import (
    generate_and_download,
    input_url_given_to_qolaba,
    nothing_local_and_audit_clean,
)

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


async def test_job_on_an_azure_gateway_stores_the_image_in_the_container_and_serves_it(
    make_gateway: Callable[..., Awaitable[Gateway]], azurite: Azurite, container: str, data_dir: Path
) -> None:
    gw = await make_gateway(CREDENTIALS, storage=_storage(azurite, container))

    job_id, image = await generate_and_download(gw)

    # Read back outside the gateway: output keys carry a per-run token, under the configured prefix.
    raw = AzureStore(
        container,
        endpoint=azurite.account_url,
        account_name=ACCOUNT,
        account_key=ACCOUNT_KEY,
        client_options={"allow_http": True},
    )
    listed = [meta["path"] async for chunk in obstore.list(raw, f"gw-test/outputs/{job_id}/") for meta in chunk]
    (name,) = listed
    assert name.endswith("-0.png")
    assert bytes(await (await obstore.get_async(raw, name)).bytes_async()) == image
    await nothing_local_and_audit_clean(gw, data_dir)


async def test_vendor_that_fetches_inputs_by_url_gets_a_sas_url(
    make_gateway: Callable[..., Awaitable[Gateway]], azurite: Azurite, container: str, fake_qolaba: Any
) -> None:
    # Qolaba takes input images only by URL: with Azure storage that URL is a SAS signed by the store.
    gw = await make_gateway(CREDENTIALS, storage=_storage(azurite, container), routes={"image-to-image": ["qolaba"]})

    url = await input_url_given_to_qolaba(gw, fake_qolaba)

    assert url.startswith(f"{azurite.account_url}/{container}/gw-test/inputs/")
    assert "sig=" in url
