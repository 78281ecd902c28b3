"""S3BlobStore's addressing, retries and error translation, over httpx.MockTransport."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from gateway.config import ConfigError, Settings, load_settings
from gateway.storage.base import BlobNotFound
from gateway.storage.s3 import S3BlobStore, S3StorageError

FIXED_TIME = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _error_xml(code: str) -> bytes:
    return f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>m</Message></Error>'.encode()


class Recorder:
    """A scripted S3: answers each request with the next response and remembers the request."""

    def __init__(self, *responses: httpx.Response | Exception) -> None:
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.responses.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def _store(handler: Callable[[httpx.Request], httpx.Response], **overrides: object) -> S3BlobStore:
    options: dict[str, object] = {
        "endpoint_url": "http://s3.test:9000",
        "bucket": "images",
        "access_key": "AKIDEXAMPLE",
        "secret_key": "secret",
        "client": httpx.AsyncClient(transport=httpx.MockTransport(handler)),
        "retry_backoff_s": 0.0,
        "clock": lambda: FIXED_TIME,
    }
    options.update(overrides)
    return S3BlobStore(**options)  # type: ignore[arg-type]


async def test_path_style_puts_the_bucket_in_the_path_and_signs_the_payload() -> None:
    s3 = Recorder(httpx.Response(200))
    await _store(s3).put("outputs/a b.png", b"data", "image/png")

    (request,) = s3.requests
    assert str(request.url) == "http://s3.test:9000/images/outputs/a%20b.png"
    assert request.headers["content-type"] == "image/png"
    assert request.headers["x-amz-content-sha256"] == (
        "3a6eb0790f39ac87c94f3856b2dd2c5d110e6811602261a9a923d3bb23adc8b7"  # sha256(b"data")
    )
    assert request.headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260301/us-east-1/")
    assert request.content == b"data"


async def test_virtual_hosted_style_puts_the_bucket_in_the_host() -> None:
    s3 = Recorder(httpx.Response(200, content=b"x"))
    await _store(s3, path_style=False, endpoint_url="https://s3.eu-west-3.amazonaws.com").get("k.png")

    assert str(s3.requests[0].url) == "https://images.s3.eu-west-3.amazonaws.com/k.png"
    assert s3.requests[0].headers["host"] == "images.s3.eu-west-3.amazonaws.com"


async def test_no_such_key_becomes_blob_not_found() -> None:
    store = _store(Recorder(httpx.Response(404, content=_error_xml("NoSuchKey"))))

    with pytest.raises(BlobNotFound):
        await store.get("missing.png")


async def test_no_such_bucket_is_a_storage_error_not_a_missing_blob() -> None:
    store = _store(Recorder(httpx.Response(404, content=_error_xml("NoSuchBucket"))))

    with pytest.raises(S3StorageError) as caught:
        await store.get("k.png")

    assert (caught.value.status, caught.value.code) == (404, "NoSuchBucket")


async def test_access_denied_is_translated_with_its_code_and_not_retried() -> None:
    s3 = Recorder(httpx.Response(403, content=_error_xml("AccessDenied")))

    with pytest.raises(S3StorageError) as caught:
        await _store(s3).put("k.png", b"x", "image/png")

    assert (caught.value.status, caught.value.code) == (403, "AccessDenied")
    assert len(s3.requests) == 1


async def test_slow_down_is_retried_and_then_succeeds() -> None:
    s3 = Recorder(
        httpx.Response(503, content=_error_xml("SlowDown")),
        httpx.ConnectError("connection reset"),
        httpx.Response(200, content=b"image"),
    )

    assert await _store(s3).get("k.png") == b"image"
    assert len(s3.requests) == 3


async def test_server_errors_past_the_last_attempt_are_a_storage_error() -> None:
    s3 = Recorder(*[httpx.Response(500, content=_error_xml("InternalError")) for _ in range(3)])

    with pytest.raises(S3StorageError) as caught:
        await _store(s3).delete("k.png")

    assert caught.value.code == "InternalError"
    assert len(s3.requests) == 3


async def test_timeouts_past_the_last_attempt_keep_the_httpx_cause() -> None:
    s3 = Recorder(httpx.ReadTimeout("slow"), httpx.ReadTimeout("slow"))

    with pytest.raises(S3StorageError) as caught:
        await _store(s3, max_attempts=2).get("k.png")

    assert caught.value.status is None
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)


async def test_error_without_an_xml_body_still_translates() -> None:
    with pytest.raises(S3StorageError) as caught:
        await _store(Recorder(httpx.Response(400, content=b"<html>bad gateway page"))).get("k.png")

    assert (caught.value.status, caught.value.code) == (400, None)


@pytest.mark.parametrize("status", [204, 200])
async def test_delete_accepts_both_success_answers(status: int) -> None:
    await _store(Recorder(httpx.Response(status))).delete("k.png")


async def test_delete_of_a_missing_key_on_servers_that_answer_404_is_not_an_error() -> None:
    await _store(Recorder(httpx.Response(404, content=_error_xml("NoSuchKey")))).delete("k.png")


@pytest.mark.parametrize("key", ["", "/abs.png", "a/../b.png", "a/./b.png", ".."])
async def test_keys_that_httpx_would_rewrite_are_refused(key: str) -> None:
    store = _store(Recorder())

    with pytest.raises(ValueError, match="invalid blob key"):
        await store.put(key, b"x", "image/png")


async def test_presigned_url_is_signed_for_the_public_endpoint_without_a_request() -> None:
    s3 = Recorder()
    store = _store(s3, public_endpoint_url="https://files.example.com")

    url = await store.presigned_url("inputs/a.png", 600)

    assert url.startswith("https://files.example.com/images/inputs/a.png?X-Amz-Algorithm=AWS4-HMAC-SHA256&")
    assert "X-Amz-Expires=600" in url
    assert "X-Amz-Date=20260301T120000Z" in url
    assert s3.requests == []


async def test_aclose_closes_only_a_client_the_store_built() -> None:
    given = httpx.AsyncClient(transport=httpx.MockTransport(Recorder()))
    await _store(Recorder(), client=given).aclose()
    assert not given.is_closed
    await given.aclose()

    owned = S3BlobStore(endpoint_url="http://s3.test", bucket="b", access_key="a", secret_key="s")
    await owned.aclose()
    assert owned._client.is_closed


def test_endpoint_must_be_http_or_https() -> None:
    with pytest.raises(ValueError, match="http"):
        S3BlobStore(endpoint_url="s3.test:9000", bucket="b", access_key="a", secret_key="s")


CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "s3-secret"}


def _storage_settings(toml: str, environ: dict[str, str] | None = None) -> Settings:
    """Settings read from `toml` as a gateway.toml file, as `gateway serve` reads it."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "gateway.toml"
        path.write_text(toml)
        return load_settings(CREDENTIALS if environ is None else environ, config_path=path)


def test_storage_section_reads_from_toml_with_defaults() -> None:
    storage = _storage_settings('[storage]\nkind = "s3"\nbucket = "gateway"\n').storage

    assert storage.region == "us-east-1"
    assert storage.s3_endpoint_url == "https://s3.us-east-1.amazonaws.com"
    assert storage.path_style is True
    assert storage.presign_ttl_s == 3600
    assert (storage.access_key, storage.secret_key) == ("AKID", "s3-secret")
    assert "s3-secret" not in repr(storage)


def test_storage_defaults_to_the_filesystem_without_credentials() -> None:
    storage = load_settings({}).storage

    assert storage.kind == "filesystem"
    assert storage.access_key is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('secret_key = "inline"', "only come from the environment"),
        ("presign_ttl_s = 604801", "presign_ttl_s"),
        ("presign_ttl_s = 0", "presign_ttl_s"),
        ("colour = 1", "colour"),
        ('endpoint_url = "minio:9000"', "endpoint_url"),
    ],
    ids=["inline-secret", "ttl-over-a-week", "ttl-zero", "unknown-field", "not-a-url"],
)
def test_storage_section_refuses_inline_secrets_unknown_fields_and_bad_values(extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _storage_settings(f'[storage]\nkind = "s3"\nbucket = "gateway"\n{extra}\n')


def test_s3_storage_needs_a_bucket_and_its_credential_variables() -> None:
    with pytest.raises(ConfigError, match=r"storage\.bucket"):
        _storage_settings('[storage]\nkind = "s3"\n')
    with pytest.raises(ConfigError, match="AWS_SECRET_ACCESS_KEY"):
        _storage_settings('[storage]\nkind = "s3"\nbucket = "b"\n', {"AWS_ACCESS_KEY_ID": "AKID"})


def test_storage_fields_come_from_gateway_storage_variables_over_the_file() -> None:
    environ = {**CREDENTIALS, "GATEWAY_STORAGE_BUCKET": "from-env", "GATEWAY_STORAGE_PRESIGN_TTL_S": "60"}

    storage = _storage_settings('[storage]\nkind = "s3"\nbucket = "from-file"\nregion = "eu-west-1"\n', environ).storage

    assert (storage.bucket, storage.presign_ttl_s, storage.region) == ("from-env", 60, "eu-west-1")


async def test_store_built_from_config_uses_its_addressing_and_prefix() -> None:
    s3 = Recorder(httpx.Response(200))
    storage = _storage_settings(
        '[storage]\nkind = "s3"\nendpoint_url = "http://minio:9000/"\nbucket = "gw"\n'
        'region = "eu-central-1"\nprefix = "prod/"\n'
    ).storage
    client = httpx.AsyncClient(transport=httpx.MockTransport(s3))

    store = S3BlobStore.from_config(storage, client=client)
    await store.put("k.png", b"x", "image/png")
    await client.aclose()

    assert str(s3.requests[0].url) == "http://minio:9000/gw/prod/k.png"
    assert "/eu-central-1/s3/aws4_request" in s3.requests[0].headers["authorization"]


@pytest.mark.parametrize("prefix", ["/abs/", "a/../b/", "./"])
def test_key_prefix_that_escapes_or_normalises_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        S3BlobStore(endpoint_url="http://s3.test", bucket="b", access_key="a", secret_key="s", prefix=prefix)
