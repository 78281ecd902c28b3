"""SigV4 for S3: AWS's published examples, and agreement with botocore's signer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import parse_qsl, urlsplit

import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from gateway.storage.signing import (
    EMPTY_PAYLOAD_SHA256,
    SigV4Signer,
    host_header,
    sha256_hex,
    uri_encode,
)

# The credentials and time of the examples in the S3 API guide
# ("Examples: Signature Calculations in AWS Signature Version 4").
AWS_ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
AWS_EXAMPLE_TIME = datetime(2013, 5, 24, tzinfo=UTC)
EXAMPLE_BUCKET = "https://examplebucket.s3.amazonaws.com"


@pytest.fixture
def aws_example_signer() -> SigV4Signer:
    return SigV4Signer(AWS_ACCESS_KEY, AWS_SECRET_KEY, "us-east-1")


def _signature(authorization: str) -> str:
    return authorization.rpartition("Signature=")[2]


def test_get_object_matches_the_aws_example(aws_example_signer: SigV4Signer) -> None:
    headers = aws_example_signer.sign_headers(
        "GET", f"{EXAMPLE_BUCKET}/test.txt", {"Range": "bytes=0-9"}, EMPTY_PAYLOAD_SHA256, AWS_EXAMPLE_TIME
    )

    assert headers["authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )
    assert headers["x-amz-date"] == "20130524T000000Z"
    assert headers["host"] == "examplebucket.s3.amazonaws.com"


def test_put_object_matches_the_aws_example(aws_example_signer: SigV4Signer) -> None:
    headers = aws_example_signer.sign_headers(
        "PUT",
        f"{EXAMPLE_BUCKET}/test%24file.text",
        {"Date": "Fri, 24 May 2013 00:00:00 GMT", "x-amz-storage-class": "REDUCED_REDUNDANCY"},
        sha256_hex(b"Welcome to Amazon S3."),
        AWS_EXAMPLE_TIME,
    )

    assert _signature(headers["authorization"]) == "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"


@pytest.mark.parametrize(
    ("query", "signature"),
    [
        ("lifecycle", "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"),
        ("max-keys=2&prefix=J", "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"),
    ],
    ids=["get-bucket-lifecycle", "list-objects"],
)
def test_bucket_requests_with_query_match_the_aws_examples(
    aws_example_signer: SigV4Signer, query: str, signature: str
) -> None:
    headers = aws_example_signer.sign_headers(
        "GET", f"{EXAMPLE_BUCKET}/?{query}", {}, EMPTY_PAYLOAD_SHA256, AWS_EXAMPLE_TIME
    )

    assert _signature(headers["authorization"]) == signature


def test_presigned_url_matches_the_aws_example(aws_example_signer: SigV4Signer) -> None:
    url = aws_example_signer.presign_url("GET", f"{EXAMPLE_BUCKET}/test.txt", 86400, AWS_EXAMPLE_TIME)

    assert url == (
        "https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
        "&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
        "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
    )


# Keys and endpoints that stress encoding, ports and regions, for the botocore cross-check.
CROSS_CHECK_CASES = [
    ("http://127.0.0.1:9000", "bucket", "outputs/job-1/0.png", "us-east-1"),
    ("http://minio:9000", "images", "inputs/tenant 7/photo (1)+ümlaut!*'~.png", "eu-central-1"),
    ("https://s3.eu-west-3.amazonaws.com", "b", "a/b/c=d&e%f;g", "eu-west-3"),
    ("https://storage.example.com:8443", "bucket.with.dots", "日本/画像.webp", "auto"),
]


def _encoded_url(endpoint: str, bucket: str, key: str) -> str:
    return f"{endpoint}/{bucket}/{uri_encode(key, keep_slash=True)}"


@pytest.mark.parametrize(("endpoint", "bucket", "key", "region"), CROSS_CHECK_CASES)
def test_header_signature_agrees_with_botocore(endpoint: str, bucket: str, key: str, region: str) -> None:
    url = _encoded_url(endpoint, bucket, key)
    body = b"some image bytes"
    now = datetime(2026, 3, 1, 12, 30, 45, tzinfo=UTC)
    ours = SigV4Signer("AKIDEXAMPLE", "secret/with+chars=", region).sign_headers(
        "PUT", url, {"Content-Type": "image/png"}, sha256_hex(body), now
    )

    request = AWSRequest(
        method="PUT",
        url=url,
        data=body,
        headers={name: value for name, value in ours.items() if name != "authorization"},
    )
    request.context["timestamp"] = "20260301T123045Z"
    botocore = S3SigV4Auth(Credentials("AKIDEXAMPLE", "secret/with+chars="), "s3", region)
    expected = botocore.signature(botocore.string_to_sign(request, botocore.canonical_request(request)), request)

    assert _signature(ours["authorization"]) == expected


@pytest.mark.parametrize(("endpoint", "bucket", "key", "region"), CROSS_CHECK_CASES)
def test_presigned_url_agrees_with_botocore(endpoint: str, bucket: str, key: str, region: str) -> None:
    url = _encoded_url(endpoint, bucket, key)
    now = datetime(2026, 3, 1, 12, 30, 45, tzinfo=UTC)
    ours = SigV4Signer("AKIDEXAMPLE", "secret/with+chars=", region).presign_url("GET", url, 900, now)

    request = AWSRequest(method="GET", url=url)
    request.context["timestamp"] = "20260301T123045Z"
    botocore = S3SigV4QueryAuth(Credentials("AKIDEXAMPLE", "secret/with+chars="), "s3", region, expires=900)
    # botocore's public presigner reads the wall clock; this step of it adds the X-Amz-* query
    # parameters for the timestamp in the context, which pins the time without patching.
    botocore._modify_request_before_signing(request)  # type: ignore[attr-defined]
    expected = botocore.signature(botocore.string_to_sign(request, botocore.canonical_request(request)), request)

    assert dict(parse_qsl(urlsplit(ours).query))["X-Amz-Signature"] == expected
    assert ours == f"{request.url}&X-Amz-Signature={expected}"  # same parameters, same encoding


def test_signing_time_in_another_zone_is_converted_to_utc(aws_example_signer: SigV4Signer) -> None:
    two_hours_east = timezone(timedelta(hours=2))
    local = datetime(2013, 5, 24, 2, 0, tzinfo=two_hours_east)

    url = aws_example_signer.presign_url("GET", f"{EXAMPLE_BUCKET}/test.txt", 86400, local)

    assert url == aws_example_signer.presign_url("GET", f"{EXAMPLE_BUCKET}/test.txt", 86400, AWS_EXAMPLE_TIME)


def test_naive_signing_time_is_refused(aws_example_signer: SigV4Signer) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        aws_example_signer.presign_url("GET", f"{EXAMPLE_BUCKET}/t", 60, datetime(2026, 1, 1))


@pytest.mark.parametrize("expires_s", [0, -1, 7 * 24 * 3600 + 1])
def test_presign_expiry_outside_what_s3_accepts_is_refused(aws_example_signer: SigV4Signer, expires_s: int) -> None:
    with pytest.raises(ValueError, match="expires_s"):
        aws_example_signer.presign_url("GET", f"{EXAMPLE_BUCKET}/t", expires_s, AWS_EXAMPLE_TIME)


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://minio:9000/b/k", "minio:9000"),
        ("http://minio:80/b/k", "minio"),
        ("https://S3.Example.COM:443/b/k", "s3.example.com"),
        ("http://[::1]:9000/b/k", "[::1]:9000"),
    ],
)
def test_host_header_drops_default_ports_only(url: str, host: str) -> None:
    assert host_header(url) == host


def test_signer_repr_hides_the_secret() -> None:
    signer = SigV4Signer("AKIDEXAMPLE", "very-secret-value", "us-east-1")

    assert "very-secret-value" not in repr(signer)
