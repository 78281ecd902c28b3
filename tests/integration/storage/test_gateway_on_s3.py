"""A gateway whose `[storage]` is an S3 bucket: inputs and outputs live there, not on disk."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from mypy_boto3_s3 import S3Client

from tests.conftest import Gateway
from tests.integration.storage.conftest import ACCESS_KEY, REGION, SECRET_KEY
from tests.integration.storage.gateway_scenarios import (
    generate_and_download,
    input_url_given_to_qolaba,
    nothing_local_and_audit_clean,
)
from tests.integration.storage.verifying_s3 import VerifyingS3Server

# Names of our own choosing, so the test proves the loader reads the variables `[storage]` names.
CREDENTIALS = {"TEST_S3_ACCESS": ACCESS_KEY, "TEST_S3_SECRET": SECRET_KEY}


def _storage(server: VerifyingS3Server, bucket: str) -> dict[str, Any]:
    return {
        "kind": "s3",
        "endpoint_url": server.endpoint_url,
        "bucket": bucket,
        "region": REGION,
        "prefix": "gw-test/",
        "access_key_env": "TEST_S3_ACCESS",
        "secret_key_env": "TEST_S3_SECRET",
        "presign_ttl_s": 120,
    }


async def test_job_on_an_s3_gateway_stores_the_image_in_the_bucket_and_serves_it(
    make_gateway: Callable[..., Awaitable[Gateway]],
    s3_server: VerifyingS3Server,
    boto_s3: S3Client,
    bucket: str,
    data_dir: Path,
) -> None:
    gw = await make_gateway(CREDENTIALS, storage=_storage(s3_server, bucket))

    job_id, image = await generate_and_download(gw)

    # Output keys carry a per-run token (a taken-over job never overwrites the first run's files).
    listed = boto_s3.list_objects_v2(Bucket=bucket, Prefix=f"gw-test/outputs/{job_id}/")["Contents"]
    (key_of_image,) = [o["Key"] for o in listed]
    assert key_of_image.endswith("-0.png")
    stored = boto_s3.get_object(Bucket=bucket, Key=key_of_image)["Body"].read()
    assert stored == image
    await nothing_local_and_audit_clean(gw, data_dir)


async def test_vendor_that_fetches_inputs_by_url_gets_a_presigned_s3_url(
    make_gateway: Callable[..., Awaitable[Gateway]],
    s3_server: VerifyingS3Server,
    bucket: str,
    fake_qolaba: Any,
) -> None:
    # Qolaba takes input images only by URL: with S3 storage that URL is presigned by the store.
    gw = await make_gateway(CREDENTIALS, storage=_storage(s3_server, bucket), routes={"image-to-image": ["qolaba"]})

    url = await input_url_given_to_qolaba(gw, fake_qolaba)

    assert url.startswith(f"{s3_server.endpoint_url}/{bucket}/gw-test/inputs/")
    assert "X-Amz-Expires=120" in url
