"""AzureBlobStore against Azurite, which checks SharedKey signatures and SAS tokens as Azure does."""

from __future__ import annotations

import base64
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import pytest

from gateway.config import load_settings
from gateway.doctor import _blob_check
from gateway.storage.azure import AzureBlobStore
from gateway.storage.cloud import StorageError
from tests.integration.storage.azurite import ACCOUNT, ACCOUNT_KEY, Azurite

# Whichever test comes first npm-installs Azurite into the cache (up to 300 s on a fresh machine).
pytestmark = pytest.mark.timeout(300 + 120)


def _store(azurite: Azurite, container: str, **overrides: object) -> AzureBlobStore:
    options: dict[str, object] = {
        "account_url": azurite.account_url,
        "container": container,
        "account_name": ACCOUNT,
        "account_key": ACCOUNT_KEY,
        "max_attempts": 1,
    }
    options.update(overrides)
    return AzureBlobStore(**options)  # type: ignore[arg-type]


async def test_presigned_url_is_a_read_only_sas_fetchable_with_plain_httpx(azure_store: AzureBlobStore) -> None:
    await azure_store.put("inputs/vendor-fetch.png", b"input image", "image/png")

    url = await azure_store.presigned_url("inputs/vendor-fetch.png", 300)

    async with httpx.AsyncClient() as client:
        response = await client.get(url)
        refused_write = await client.put(url, content=b"overwrite", headers={"x-ms-blob-type": "BlockBlob"})
    assert response.status_code == 200
    assert response.content == b"input image"
    assert response.headers["content-type"] == "image/png"
    assert dict(parse_qsl(urlsplit(url).query))["sp"] == "r"
    assert refused_write.status_code == 403
    assert await azure_store.get("inputs/vendor-fetch.png") == b"input image"


@pytest.mark.parametrize(
    ("name", "value"),
    [("sig", base64.b64encode(b"0" * 32).decode()), ("se", "2099-01-01T00:00:00Z")],
    ids=["forged-signature", "longer-expiry"],
)
async def test_tampered_sas_url_is_refused(azure_store: AzureBlobStore, name: str, value: str) -> None:
    await azure_store.put("inputs/secret.png", b"private", "image/png")
    parts = urlsplit(await azure_store.presigned_url("inputs/secret.png", 300))
    url = urlunsplit(parts._replace(query=urlencode({**dict(parse_qsl(parts.query)), name: value})))

    async with httpx.AsyncClient() as client:
        response = await client.get(url)

    assert response.status_code == 403


async def test_sas_url_is_on_the_public_account_url(azurite: Azurite, container: str) -> None:
    # The gateway talks to 127.0.0.1, vendors to "localhost": the SAS names the address they reach.
    public = azurite.account_url.replace("127.0.0.1", "localhost")
    store = _store(azurite, container, public_account_url=public)
    await store.put("inputs/p.png", b"public", "image/png")

    url = await store.presigned_url("inputs/p.png", 60)

    assert url.startswith(f"{public}/{container}/inputs/p.png?")
    async with httpx.AsyncClient() as client:
        assert (await client.get(url)).content == b"public"


async def test_prefix_puts_every_key_under_it(azurite: Azurite, container: str) -> None:
    prefixed = _store(azurite, container, prefix="prod/")
    await prefixed.put("outputs/k.png", b"under prod", "image/png")

    assert await _store(azurite, container).get("prod/outputs/k.png") == b"under prod"
    assert await prefixed.get("outputs/k.png") == b"under prod"


async def test_wrong_account_key_is_a_storage_error_with_status_and_code(azurite: Azurite, container: str) -> None:
    store = _store(azurite, container, account_key=base64.b64encode(b"not the key" * 6).decode())

    with pytest.raises(StorageError) as caught:
        await store.put("k.png", b"x", "image/png")

    assert (caught.value.status, caught.value.code) == (403, "AuthorizationFailure")


async def test_missing_container_is_a_storage_error_not_a_missing_blob(azurite: Azurite) -> None:
    store = _store(azurite, "no-such-container")

    with pytest.raises(StorageError) as caught:
        await store.get("k.png")
    assert (caught.value.status, caught.value.code) == (404, "ContainerNotFound")
    # Azure deletes through its batch API, which names no error code: its message still tells.
    with pytest.raises(StorageError) as caught:
        await store.delete("k.png")
    assert (caught.value.status, caught.value.code) == (404, "ContainerNotFound")
    with pytest.raises(StorageError):
        await store.check_bucket()


async def test_doctor_writes_reads_and_deletes_a_probe_in_the_container(
    azurite: Azurite, container: str, tmp_path: Path
) -> None:
    settings = load_settings(
        {
            "GATEWAY_DATA_DIR": str(tmp_path),
            "GATEWAY_STORAGE_KIND": "azure",
            "GATEWAY_STORAGE_BUCKET": container,
            "GATEWAY_STORAGE_ACCOUNT_NAME": ACCOUNT,
            "GATEWAY_STORAGE_ENDPOINT_URL": azurite.account_url,
            "AZURE_STORAGE_KEY": ACCOUNT_KEY,
        }
    )

    check = await _blob_check(settings)

    assert (check.status, check.detail) == (
        "ok",
        f"azure container {container} at {azurite.account_url}: write, read, delete",
    )


async def test_azure_variables_in_the_environment_change_neither_the_address_nor_the_credential(
    azurite: Azurite, container: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # obstore reads AZURE_*; a token would win over an account key, the emulator switch over the URL.
    monkeypatch.setenv("AZURE_STORAGE_TOKEN", "not-a-token")
    monkeypatch.setenv("AZURE_STORAGE_SAS_KEY", "sv=2023-11-03&sig=forged")
    monkeypatch.setenv("AZURE_STORAGE_USE_EMULATOR", "true")
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", base64.b64encode(b"another key").decode())
    store = _store(azurite, container)

    await store.put("inputs/env.png", b"pinned", "image/png")

    assert await store.get("inputs/env.png") == b"pinned"
    async with httpx.AsyncClient() as client:
        assert (await client.get(await store.presigned_url("inputs/env.png", 60))).content == b"pinned"
