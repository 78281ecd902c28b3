"""S3BlobStore against a real S3 server (moto) that checks every signature with botocore."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import pytest
from mypy_boto3_s3 import S3Client

from gateway.storage.s3 import S3BlobStore, S3StorageError
from tests.integration.storage.conftest import ACCESS_KEY, REGION, SECRET_KEY
from tests.integration.storage.verifying_s3 import VerifyingS3Server


def _store(server: VerifyingS3Server, bucket: str, **overrides: object) -> S3BlobStore:
    options: dict[str, object] = {
        "endpoint_url": server.endpoint_url,
        "bucket": bucket,
        "access_key": ACCESS_KEY,
        "secret_key": SECRET_KEY,
        "region": REGION,
        "retry_backoff_s": 0.0,
    }
    options.update(overrides)
    return S3BlobStore(**options)  # type: ignore[arg-type]


async def test_keys_needing_percent_encoding_match_what_boto3_names_them(
    store: S3BlobStore, boto_s3: S3Client, bucket: str
) -> None:
    key = "inputs/tenant 7/photo (1)+ümlaut!*'~.png"

    await store.put(key, b"written by the gateway", "image/png")

    assert boto_s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"written by the gateway"
    boto_s3.put_object(Bucket=bucket, Key=key, Body=b"written by boto3")
    assert await store.get(key) == b"written by boto3"


async def test_content_type_is_stored_with_the_object(store: S3BlobStore, boto_s3: S3Client, bucket: str) -> None:
    await store.put("outputs/job-4/0.jpg", b"jpeg bytes", "image/jpeg")

    assert boto_s3.head_object(Bucket=bucket, Key="outputs/job-4/0.jpg")["ContentType"] == "image/jpeg"


async def test_expired_presigned_url_is_refused(store: S3BlobStore, s3_server: VerifyingS3Server) -> None:
    await store.put("inputs/old.png", b"input image", "image/png")
    url = await store.presigned_url("inputs/old.png", 60)

    async with httpx.AsyncClient() as client:
        assert (await client.get(url)).status_code == 200
        with s3_server.clock_moved(timedelta(seconds=61)):
            response = await client.get(url)

    assert response.status_code == 403
    assert b"Request has expired" in response.content


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda path, query: (path.replace("secret.png", "other.png"), query), id="other-key"),
        pytest.param(lambda path, query: (path, {**query, "X-Amz-Expires": "604800"}), id="longer-expiry"),
        pytest.param(
            lambda path, query: (path, {**query, "X-Amz-Signature": "0" * 64}),
            id="forged-signature",
        ),
    ],
)
async def test_tampered_presigned_url_is_refused(store: S3BlobStore, tamper: object) -> None:
    await store.put("inputs/secret.png", b"private", "image/png")
    await store.put("inputs/other.png", b"also private", "image/png")
    parts = urlsplit(await store.presigned_url("inputs/secret.png", 300))
    path, query = tamper(parts.path, dict(parse_qsl(parts.query)))  # type: ignore[operator]
    url = urlunsplit((parts.scheme, parts.netloc, path, urlencode(query), ""))

    async with httpx.AsyncClient() as client:
        response = await client.get(url)

    assert response.status_code == 403
    assert b"SignatureDoesNotMatch" in response.content


async def test_presigned_url_uses_the_public_endpoint(s3_server: VerifyingS3Server, bucket: str) -> None:
    # The gateway talks to 127.0.0.1, vendors to "localhost": the signature must cover the latter.
    public = f"http://localhost:{s3_server.port}"
    store = _store(s3_server, bucket, public_endpoint_url=public)
    await store.put("inputs/p.png", b"public", "image/png")

    url = await store.presigned_url("inputs/p.png", 60)
    await store.aclose()

    assert url.startswith(f"{public}/{bucket}/inputs/p.png?")
    async with httpx.AsyncClient() as client:
        assert (await client.get(url)).content == b"public"


async def test_wrong_secret_key_is_a_storage_error_naming_the_s3_code(
    s3_server: VerifyingS3Server, bucket: str
) -> None:
    store = _store(s3_server, bucket, secret_key="not-the-secret")

    with pytest.raises(S3StorageError) as caught:
        await store.get("outputs/anything.png")
    await store.aclose()

    assert caught.value.status == 403
    assert caught.value.code == "SignatureDoesNotMatch"


async def test_unknown_access_key_is_a_storage_error_naming_the_s3_code(
    s3_server: VerifyingS3Server, bucket: str
) -> None:
    store = _store(s3_server, bucket, access_key="AKIDNOBODYKNOWS00000")

    with pytest.raises(S3StorageError) as caught:
        await store.put("outputs/anything.png", b"x", "image/png")

    assert (caught.value.status, caught.value.code) == (403, "InvalidAccessKeyId")


async def test_presigned_url_with_a_wrong_secret_is_refused(s3_server: VerifyingS3Server, bucket: str) -> None:
    await _store(s3_server, bucket).put("inputs/guarded.png", b"private", "image/png")
    url = await _store(s3_server, bucket, secret_key="not-the-secret").presigned_url("inputs/guarded.png", 60)

    async with httpx.AsyncClient() as client:
        response = await client.get(url)

    assert response.status_code == 403
    assert b"SignatureDoesNotMatch" in response.content


async def test_virtual_hosted_presigned_url_names_the_bucket_in_the_signed_host(
    s3_server: VerifyingS3Server, bucket: str
) -> None:
    # `<bucket>.localhost` does not resolve here, so the request goes to 127.0.0.1 with that Host:
    # the server routes by Host as S3 does, and checks the signature over it.
    await _store(s3_server, bucket).put("inputs/vh.png", b"virtual host", "image/png")
    store = _store(s3_server, bucket, endpoint_url=f"http://localhost:{s3_server.port}", path_style=False)

    parts = urlsplit(await store.presigned_url("inputs/vh.png", 60))

    assert (parts.netloc, parts.path) == (f"{bucket}.localhost:{s3_server.port}", "/inputs/vh.png")
    async with httpx.AsyncClient() as client:
        response = await client.get(
            f"{s3_server.endpoint_url}{parts.path}?{parts.query}", headers={"Host": parts.netloc}
        )
    assert response.status_code == 200, response.text
    assert response.content == b"virtual host"


async def test_missing_bucket_is_a_storage_error_not_a_missing_blob(s3_server: VerifyingS3Server) -> None:
    store = _store(s3_server, "no-such-bucket-here")

    with pytest.raises(S3StorageError) as caught:
        await store.get("outputs/x.png")
    with pytest.raises(S3StorageError):
        await store.check_bucket()
    await store.aclose()

    assert caught.value.code == "NoSuchBucket"


async def test_unreachable_endpoint_is_a_storage_error(bucket: str) -> None:
    # Port 9 (discard) on loopback refuses the connection at once.
    store = S3BlobStore(
        endpoint_url="http://127.0.0.1:9",
        bucket=bucket,
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        max_attempts=2,
        retry_backoff_s=0.0,
    )

    with pytest.raises(S3StorageError) as caught:
        await store.put("outputs/x.png", b"x", "image/png")
    await store.aclose()

    assert caught.value.status is None
    assert caught.value.__cause__ is not None
    assert "127.0.0.1:9" in str(caught.value)


def test_server_refuses_unsigned_requests(s3_server: VerifyingS3Server, bucket: str) -> None:
    # Guards the harness: were the verifier a no-op, the refusal tests above would prove nothing.
    response = httpx.get(f"{s3_server.endpoint_url}/{bucket}/anything")

    assert response.status_code == 403
