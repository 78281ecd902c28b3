"""What every cloud blob store does, whichever service is behind it: S3 (moto behind botocore's
SigV4 checks), Azure (Azurite) and GCS (the verifying XML API server). The store-specific files
check what only their service has: its signatures, its errors, its environment variables."""

from __future__ import annotations

import os

import httpx
import pytest

from gateway.storage.base import BlobNotFound, BlobStore
from gateway.storage.cloud import ObjectBlobStore

# The Azure cases npm-install Azurite into the cache on a fresh machine (up to 300 s).
pytestmark = pytest.mark.timeout(300 + 120)

# Each kind's store fixture (tests/integration/storage/conftest.py), on a fresh bucket or container.
STORES = {"s3": "store", "azure": "azure_store", "gcs": "gcs_store"}


@pytest.fixture(params=sorted(STORES))
def cloud_store(request: pytest.FixtureRequest) -> ObjectBlobStore:
    store: ObjectBlobStore = request.getfixturevalue(STORES[request.param])
    return store


def test_each_cloud_store_satisfies_the_blob_store_protocol(cloud_store: ObjectBlobStore) -> None:
    as_protocol: BlobStore = cloud_store
    assert as_protocol is cloud_store


async def test_binary_content_round_trips_byte_for_byte(cloud_store: ObjectBlobStore) -> None:
    data = bytes(range(256)) * 64 + os.urandom(512 * 1024)

    await cloud_store.put("outputs/job-1/0.webp", data, "image/webp")

    assert await cloud_store.get("outputs/job-1/0.webp") == data


async def test_empty_blob_round_trips(cloud_store: ObjectBlobStore) -> None:
    await cloud_store.put("outputs/empty", b"", "application/octet-stream")

    assert await cloud_store.get("outputs/empty") == b""


async def test_put_overwrites_the_previous_blob(cloud_store: ObjectBlobStore) -> None:
    await cloud_store.put("inputs/a.png", b"first", "image/png")
    await cloud_store.put("inputs/a.png", b"second, longer", "image/png")

    assert await cloud_store.get("inputs/a.png") == b"second, longer"


async def test_get_of_missing_blob_raises_blob_not_found(cloud_store: ObjectBlobStore) -> None:
    with pytest.raises(BlobNotFound):
        await cloud_store.get("outputs/never-written.png")


async def test_delete_removes_the_blob_and_repeating_it_is_not_an_error(cloud_store: ObjectBlobStore) -> None:
    await cloud_store.put("outputs/job-3/0.png", b"x", "image/png")

    await cloud_store.delete("outputs/job-3/0.png")
    await cloud_store.delete("outputs/job-3/0.png")

    with pytest.raises(BlobNotFound):
        await cloud_store.get("outputs/job-3/0.png")


async def test_presigned_url_fetches_the_blob_with_plain_httpx_and_its_content_type(
    cloud_store: ObjectBlobStore,
) -> None:
    await cloud_store.put("inputs/vendor-fetch.png", b"input image", "image/png")

    url = await cloud_store.presigned_url("inputs/vendor-fetch.png", 300)

    async with httpx.AsyncClient() as client:
        response = await client.get(url)
    assert response.status_code == 200
    assert response.content == b"input image"
    assert response.headers["content-type"] == "image/png"


async def test_check_bucket_passes_for_an_existing_bucket(cloud_store: ObjectBlobStore) -> None:
    await cloud_store.check_bucket()
