"""S3BlobStore's addressing, retries and error translation, over httpx.MockTransport."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import msgspec
import pytest

from gateway.storage.base import BlobNotFound
from gateway.storage.s3 import S3BlobStore, S3Config, S3StorageError

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


def test_config_reads_from_toml_with_defaults() -> None:
    raw = tomllib.loads('endpoint_url = "http://minio:9000"\nbucket = "gateway"\n')

    config = msgspec.convert(raw, S3Config)

    assert config.region == "us-east-1"
    assert config.path_style is True
    assert config.presign_ttl_s == 3600
    assert (config.access_key_env, config.secret_key_env) == ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


@pytest.mark.parametrize(
    "extra",
    ['secret_key = "inline"', "presign_ttl_s = 604801", "presign_ttl_s = 0"],
    ids=["unknown-field", "ttl-over-a-week", "ttl-zero"],
)
def test_config_refuses_unknown_fields_and_out_of_range_ttls(extra: str) -> None:
    raw = tomllib.loads(f'endpoint_url = "http://minio:9000"\nbucket = "gateway"\n{extra}\n')

    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(raw, S3Config)


async def test_store_built_from_config_uses_its_addressing() -> None:
    s3 = Recorder(httpx.Response(200))
    config = S3Config(endpoint_url="http://minio:9000/", bucket="gw", region="eu-central-1")
    client = httpx.AsyncClient(transport=httpx.MockTransport(s3))

    store = S3BlobStore.from_config(config, access_key="AKID", secret_key="s", client=client)
    await store.put("k.png", b"x", "image/png")
    await client.aclose()

    assert str(s3.requests[0].url) == "http://minio:9000/gw/k.png"
    assert "/eu-central-1/s3/aws4_request" in s3.requests[0].headers["authorization"]
