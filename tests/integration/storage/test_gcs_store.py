"""GCSBlobStore against a GCS XML API server that checks tokens and V4 signed URLs with Google's own code."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import pytest

from gateway.config import load_settings
from gateway.doctor import _blob_check
from gateway.storage.cloud import StorageError
from gateway.storage.gcs import GCSBlobStore
from tests.integration.storage.conftest import ServiceAccount, make_service_account
from tests.integration.storage.verifying_gcs import VerifyingGCSServer


def _store(server: VerifyingGCSServer, account: ServiceAccount, bucket: str, **overrides: object) -> GCSBlobStore:
    options: dict[str, object] = {
        "endpoint_url": server.endpoint_url,
        "bucket": bucket,
        "service_account_key": account.key_json,
        "max_attempts": 1,
    }
    options.update(overrides)
    return GCSBlobStore(**options)  # type: ignore[arg-type]


async def test_put_then_get_returns_the_same_bytes_and_keeps_the_content_type(
    gcs_store: GCSBlobStore, gcs_server: VerifyingGCSServer, gcs_bucket: str
) -> None:
    data = bytes(range(256)) * 64

    await gcs_store.put("outputs/job-1/0.png", data, "image/png")

    assert await gcs_store.get("outputs/job-1/0.png") == data
    assert gcs_server.objects(gcs_bucket) == {"outputs/job-1/0.png": data}
    assert gcs_server.app.buckets[gcs_bucket]["outputs/job-1/0.png"].content_type == "image/png"


async def test_signed_url_fetches_the_object_with_plain_httpx_and_only_for_reading(gcs_store: GCSBlobStore) -> None:
    await gcs_store.put("inputs/vendor-fetch.png", b"input image", "image/png")

    url = await gcs_store.presigned_url("inputs/vendor-fetch.png", 300)

    async with httpx.AsyncClient() as client:
        response = await client.get(url)
        refused_write = await client.put(url, content=b"overwrite")
    assert response.status_code == 200
    assert response.content == b"input image"
    assert response.headers["content-type"] == "image/png"
    query = dict(parse_qsl(urlsplit(url).query))
    assert (query["X-Goog-Algorithm"], query["X-Goog-Expires"]) == ("GOOG4-RSA-SHA256", "300")
    assert refused_write.status_code == 403
    assert await gcs_store.get("inputs/vendor-fetch.png") == b"input image"


@pytest.mark.parametrize(
    ("name", "value"),
    [("X-Goog-Signature", "00" * 256), ("X-Goog-Expires", "604800")],
    ids=["forged-signature", "longer-expiry"],
)
async def test_tampered_signed_url_is_refused(gcs_store: GCSBlobStore, name: str, value: str) -> None:
    await gcs_store.put("inputs/secret.png", b"private", "image/png")
    parts = urlsplit(await gcs_store.presigned_url("inputs/secret.png", 300))
    url = urlunsplit(parts._replace(query=urlencode({**dict(parse_qsl(parts.query)), name: value})))

    async with httpx.AsyncClient() as client:
        response = await client.get(url)

    assert response.status_code == 403
    assert b"<Code>SignatureDoesNotMatch</Code>" in response.content


async def test_signed_url_for_one_object_does_not_open_another(gcs_store: GCSBlobStore) -> None:
    await gcs_store.put("inputs/public.png", b"shared", "image/png")
    await gcs_store.put("inputs/private.png", b"not shared", "image/png")
    url = await gcs_store.presigned_url("inputs/public.png", 300)

    async with httpx.AsyncClient() as client:
        response = await client.get(url.replace("inputs/public.png", "inputs/private.png"))

    assert response.status_code == 403


async def test_signed_url_stops_working_when_it_expires(
    gcs_store: GCSBlobStore, gcs_server: VerifyingGCSServer
) -> None:
    await gcs_store.put("inputs/brief.png", b"brief", "image/png")
    url = await gcs_store.presigned_url("inputs/brief.png", 60)

    async with httpx.AsyncClient() as client:
        assert (await client.get(url)).status_code == 200
        with gcs_server.clock_moved(timedelta(seconds=61)):
            expired = await client.get(url)

    assert expired.status_code == 400
    assert b"<Code>ExpiredToken</Code>" in expired.content


async def test_signed_url_is_on_the_public_endpoint(
    gcs_server: VerifyingGCSServer, gcs_account: ServiceAccount, gcs_bucket: str
) -> None:
    # The gateway talks to 127.0.0.1, vendors to "localhost": the URL names the address they reach.
    public = gcs_server.endpoint_url.replace("127.0.0.1", "localhost")
    store = _store(gcs_server, gcs_account, gcs_bucket, public_endpoint_url=public)
    await store.put("inputs/p.png", b"public", "image/png")

    url = await store.presigned_url("inputs/p.png", 60)

    assert url.startswith(f"{public}/{gcs_bucket}/inputs/p.png?")
    async with httpx.AsyncClient() as client:
        assert (await client.get(url)).content == b"public"


async def test_prefix_puts_every_key_under_it(
    gcs_server: VerifyingGCSServer, gcs_account: ServiceAccount, gcs_bucket: str
) -> None:
    prefixed = _store(gcs_server, gcs_account, gcs_bucket, prefix="prod/")
    await prefixed.put("outputs/k.png", b"under prod", "image/png")

    assert gcs_server.objects(gcs_bucket) == {"prod/outputs/k.png": b"under prod"}
    assert await prefixed.get("outputs/k.png") == b"under prod"


async def test_unknown_service_account_is_a_storage_error_with_status_and_code(
    gcs_server: VerifyingGCSServer, gcs_bucket: str
) -> None:
    stranger = make_service_account("stranger@elsewhere.iam.gserviceaccount.com")
    store = _store(gcs_server, stranger, gcs_bucket)

    with pytest.raises(StorageError) as caught:
        await store.put("k.png", b"x", "image/png")

    assert (caught.value.status, caught.value.code) == (401, "AuthenticationRequired")


async def test_missing_bucket_is_a_storage_error_not_a_missing_object(
    gcs_server: VerifyingGCSServer, gcs_account: ServiceAccount
) -> None:
    store = _store(gcs_server, gcs_account, "no-such-bucket")

    with pytest.raises(StorageError) as caught:
        await store.get("k.png")
    assert (caught.value.status, caught.value.code) == (404, "NoSuchBucket")
    with pytest.raises(StorageError) as caught:
        await store.delete("k.png")
    assert (caught.value.status, caught.value.code) == (404, "NoSuchBucket")
    with pytest.raises(StorageError):
        await store.check_bucket()


async def test_check_bucket_lists_the_bucket(gcs_store: GCSBlobStore, gcs_server: VerifyingGCSServer) -> None:
    await gcs_store.put("outputs/a.png", b"a", "image/png")

    await gcs_store.check_bucket()

    assert gcs_server.app.requests[-1][0] == "GET"


def _gcs_environment(server: VerifyingGCSServer, account: ServiceAccount, bucket: str, tmp: Path) -> dict[str, str]:
    return {
        "GATEWAY_DATA_DIR": str(tmp),
        "GATEWAY_STORAGE_KIND": "gcs",
        "GATEWAY_STORAGE_BUCKET": bucket,
        "GATEWAY_STORAGE_ENDPOINT_URL": server.endpoint_url,
        "GOOGLE_SERVICE_ACCOUNT_KEY": account.key_json,
    }


async def test_doctor_writes_reads_and_deletes_a_probe_in_the_bucket(
    gcs_server: VerifyingGCSServer, gcs_account: ServiceAccount, gcs_bucket: str, tmp_path: Path
) -> None:
    settings = load_settings(_gcs_environment(gcs_server, gcs_account, gcs_bucket, tmp_path))

    check = await _blob_check(settings)

    assert (check.status, check.detail) == (
        "ok",
        f"gcs bucket {gcs_bucket} at {gcs_server.endpoint_url}: write, read, delete",
    )
    assert gcs_server.objects(gcs_bucket) == {}


async def test_a_key_file_that_turns_signing_off_or_moves_the_endpoint_changes_neither(
    gcs_server: VerifyingGCSServer, gcs_account: ServiceAccount, gcs_bucket: str, tmp_path: Path
) -> None:
    # object_store honours both fields of a key file; the loader keeps only the signing fields.
    key = {**gcs_account.info, "disable_oauth": True, "gcs_base_url": "http://127.0.0.1:9"}
    environ = {
        **_gcs_environment(gcs_server, gcs_account, gcs_bucket, tmp_path),
        "GOOGLE_SERVICE_ACCOUNT_KEY": json.dumps(key),
    }
    check = await _blob_check(load_settings(environ))

    assert check.status == "ok", check.detail


async def test_google_variables_in_the_environment_change_neither_the_address_nor_the_credential(
    gcs_server: VerifyingGCSServer,
    gcs_account: ServiceAccount,
    gcs_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # obstore reads GOOGLE_*: the store's own key and endpoint must win over every one it honours.
    monkeypatch.setenv("GOOGLE_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("GOOGLE_SERVICE_ACCOUNT_KEY", make_service_account("other@x.iam.gserviceaccount.com").key_json)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-such-file.json"))
    monkeypatch.setenv("GOOGLE_BUCKET", "another-bucket")
    monkeypatch.setenv("GOOGLE_SKIP_SIGNATURE", "true")
    store = _store(gcs_server, gcs_account, gcs_bucket)

    await store.put("inputs/env.png", b"pinned", "image/png")

    assert gcs_server.objects(gcs_bucket) == {"inputs/env.png": b"pinned"}
    async with httpx.AsyncClient() as client:
        assert (await client.get(await store.presigned_url("inputs/env.png", 60))).content == b"pinned"
