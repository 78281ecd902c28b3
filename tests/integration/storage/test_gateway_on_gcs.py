"""A gateway whose `[storage]` is a Google Cloud Storage bucket: inputs and outputs live there, not on disk."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.conftest import Gateway
from tests.integration.storage.conftest import ServiceAccount
from tests.integration.storage.gateway_scenarios import (
    generate_and_download,
    input_url_given_to_qolaba,
    nothing_local_and_audit_clean,
)
from tests.integration.storage.verifying_gcs import VerifyingGCSServer

# A variable of our own choosing, so the test proves the loader reads the one `[storage]` names.
KEY_VARIABLE = "TEST_GCS_KEY"


def _storage(server: VerifyingGCSServer, bucket: str) -> dict[str, Any]:
    return {
        "kind": "gcs",
        "endpoint_url": server.endpoint_url,
        "bucket": bucket,
        "service_account_key_env": KEY_VARIABLE,
        "prefix": "gw-test/",
        "presign_ttl_s": 120,
    }


async def test_job_on_a_gcs_gateway_stores_the_image_in_the_bucket_and_serves_it(
    make_gateway: Callable[..., Awaitable[Gateway]],
    gcs_server: VerifyingGCSServer,
    gcs_account: ServiceAccount,
    gcs_bucket: str,
    data_dir: Path,
) -> None:
    gw = await make_gateway({KEY_VARIABLE: gcs_account.key_json}, storage=_storage(gcs_server, gcs_bucket))

    job_id, image = await generate_and_download(gw)

    # Output keys carry a per-run token, under the configured prefix.
    [(name, stored)] = [
        (key, data)
        for key, data in gcs_server.objects(gcs_bucket).items()
        if key.startswith(f"gw-test/outputs/{job_id}/")
    ]
    assert name.endswith("-0.png")
    assert stored == image
    await nothing_local_and_audit_clean(gw, data_dir)


async def test_vendor_that_fetches_inputs_by_url_gets_a_v4_signed_url(
    make_gateway: Callable[..., Awaitable[Gateway]],
    gcs_server: VerifyingGCSServer,
    gcs_account: ServiceAccount,
    gcs_bucket: str,
    fake_qolaba: Any,
) -> None:
    # Qolaba takes input images only by URL: with GCS storage that URL is signed by the store.
    gw = await make_gateway(
        {KEY_VARIABLE: gcs_account.key_json},
        storage=_storage(gcs_server, gcs_bucket),
        routes={"image-to-image": ["qolaba"]},
    )

    url = await input_url_given_to_qolaba(gw, fake_qolaba)

    assert url.startswith(f"{gcs_server.endpoint_url}/{gcs_bucket}/gw-test/inputs/")
    assert dict(parse_qsl(urlsplit(url).query))["X-Goog-Expires"] == "120"
