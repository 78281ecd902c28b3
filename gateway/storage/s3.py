"""A BlobStore on any S3-compatible server (AWS S3, MinIO, Ceph RGW, R2...), spoken over httpx.

Requests are signed with AWS Signature V4 (`gateway.storage.signing`); boto3 would pull in a
large dependency tree for four calls. Foreign failures are translated once, here, by type and by
the S3 error code in the response body: a missing object is `BlobNotFound`, everything else is
`S3StorageError`. Idempotent calls (all of them: PUT of the same bytes, GET, DELETE) are retried
on connection errors and 5xx answers, re-signed each time.
"""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx

from gateway.config import StorageConfig
from gateway.observability.tracing import child_span
from gateway.storage.base import BlobNotFound
from gateway.storage.signing import (
    EMPTY_PAYLOAD_SHA256,
    SigV4Signer,
    sha256_hex,
    uri_encode,
)

# S3 answers these with a retryable condition (InternalError, SlowDown, gateway trouble).
_RETRY_STATUSES = frozenset({500, 502, 503, 504})
# Error bodies are small XML documents; anything larger is not one and is not parsed.
_MAX_ERROR_BODY = 64 * 1024
# S3 reports a missing object as NoSuchKey; a missing bucket (NoSuchBucket) is a deployment
# fault, not a missing blob, and must not read as one.
_MISSING_OBJECT_CODES = frozenset({"NoSuchKey", None})


class S3StorageError(Exception):
    """The S3-compatible store refused or failed a request (anything but a missing object)."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status  # None when no HTTP answer came (connection, timeout)
        self.code = code  # the S3 error code, e.g. "AccessDenied", "SignatureDoesNotMatch"


def _error_code(body: bytes) -> str | None:
    """The `<Code>` of an S3 error document, or None when the body is not one."""
    if not body or len(body) > _MAX_ERROR_BODY:
        return None
    try:
        # The body comes from the operator's own storage endpoint and is size-capped above;
        # the stdlib parser (expat >= 2.4) refuses entity-expansion bombs.
        root = ET.fromstring(body)  # noqa: S314
    except ET.ParseError:
        return None
    code = root.findtext("Code")
    return code.strip() if code else None


def _check_key(key: str) -> None:
    # httpx normalises "." and ".." path segments away, which would sign one path and send another.
    if not key or key.startswith("/") or any(part in {".", ".."} for part in key.split("/")):
        raise ValueError(f"invalid blob key {key!r}")


class S3BlobStore:
    """The BlobStore protocol over the S3 REST API (PutObject, GetObject, DeleteObject)."""

    def __init__(
        self,
        *,
        endpoint_url: str,
        bucket: str,
        access_key: str,
        secret_key: str,
        region: str = "us-east-1",
        prefix: str = "",
        path_style: bool = True,
        public_endpoint_url: str | None = None,
        client: httpx.AsyncClient | None = None,
        request_timeout_s: float = 30.0,
        max_attempts: int = 3,
        retry_backoff_s: float = 0.1,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        for url in (endpoint_url, public_endpoint_url):
            if url is not None and urlsplit(url).scheme not in {"http", "https"}:
                raise ValueError(f"S3 endpoint must be an http(s) URL, got {url!r}")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._endpoint = endpoint_url.rstrip("/")
        self._public_endpoint = (public_endpoint_url or endpoint_url).rstrip("/")
        self._bucket = bucket
        if prefix.startswith("/") or any(part in {".", ".."} for part in prefix.split("/")):
            raise ValueError(f"invalid key prefix {prefix!r}")
        self._prefix = prefix
        self._path_style = path_style
        self._signer = SigV4Signer(access_key, secret_key, region, "s3")
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(timeout=httpx.Timeout(request_timeout_s, connect=5.0))
        self._max_attempts = max_attempts
        self._retry_backoff_s = retry_backoff_s
        self._clock = clock or (lambda: datetime.now(UTC))

    @classmethod
    def from_config(cls, config: StorageConfig, *, client: httpx.AsyncClient | None = None) -> S3BlobStore:
        """A store for `[storage]` with kind "s3"; `load_settings` has resolved the credentials."""
        if not config.bucket:
            raise ValueError("storage.bucket is required for an S3 store")
        if config.access_key is None or config.secret_key is None:
            raise ValueError("S3 credentials were not resolved from storage.access_key_env / secret_key_env")
        return cls(
            endpoint_url=config.s3_endpoint_url,
            bucket=config.bucket,
            access_key=config.access_key,
            secret_key=config.secret_key,
            region=config.region,
            prefix=config.prefix,
            path_style=config.path_style,
            public_endpoint_url=config.public_endpoint_url,
            client=client,
            request_timeout_s=config.request_timeout_s,
        )

    def __repr__(self) -> str:
        return f"S3BlobStore(endpoint={self._endpoint!r}, bucket={self._bucket!r})"

    def _url(self, endpoint: str, key: str) -> str:
        path = uri_encode(self._prefix + key, keep_slash=True)
        if self._path_style:
            return f"{endpoint}/{self._bucket}/{path}"
        parts = urlsplit(endpoint)
        return f"{parts.scheme}://{self._bucket}.{parts.netloc}{parts.path}/{path}"

    def _bucket_url(self) -> str:
        if self._path_style:
            return f"{self._endpoint}/{self._bucket}"
        parts = urlsplit(self._endpoint)
        return f"{parts.scheme}://{self._bucket}.{parts.netloc}{parts.path}/"

    async def _send(
        self,
        method: str,
        url: str,
        *,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        payload_sha256 = EMPTY_PAYLOAD_SHA256 if content is None else sha256_hex(content)
        for attempt in range(1, self._max_attempts + 1):
            # Re-signed per attempt: x-amz-date must stay within S3's 15-minute skew window.
            signed = self._signer.sign_headers(method, url, headers or {}, payload_sha256, self._clock())
            try:
                response = await self._client.request(method, url, content=content, headers=signed)
            except httpx.TransportError as exc:
                if attempt == self._max_attempts:
                    raise S3StorageError(f"{method} {url}: {type(exc).__name__}") from exc
            else:
                if response.status_code not in _RETRY_STATUSES or attempt == self._max_attempts:
                    return response
            await asyncio.sleep(self._retry_backoff_s * 2 ** (attempt - 1))
        raise AssertionError("unreachable: the last attempt returns or raises")

    @staticmethod
    def _failure(method: str, key: str, response: httpx.Response) -> S3StorageError:
        code = _error_code(response.content)
        return S3StorageError(
            f"{method} {key}: HTTP {response.status_code} {code or ''}".rstrip(),
            status=response.status_code,
            code=code,
        )

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store `data` under `key`; the payload hash is signed, so S3 rejects a corrupted upload."""
        _check_key(key)
        with child_span("blob.put", {"gateway.blob.store": "s3", "gateway.blob.bytes": len(data)}):
            response = await self._send(
                "PUT", self._url(self._endpoint, key), content=data, headers={"content-type": content_type}
            )
            if response.status_code != 200:
                raise self._failure("PUT", key, response)

    async def get(self, key: str) -> bytes:
        """The bytes under `key`; `BlobNotFound` when S3 has no such object."""
        _check_key(key)
        response = await self._send("GET", self._url(self._endpoint, key))
        if response.status_code == 200:
            return response.content
        failure = self._failure("GET", key, response)
        if response.status_code == 404 and failure.code in _MISSING_OBJECT_CODES:
            raise BlobNotFound(key) from failure
        raise failure

    async def delete(self, key: str) -> None:
        """Remove `key`; S3 answers 204 for a key that is already gone, and so do we."""
        _check_key(key)
        response = await self._send("DELETE", self._url(self._endpoint, key))
        # Some S3-compatible servers answer 404 NoSuchKey where AWS answers 204.
        if response.status_code in {200, 204}:
            return
        failure = self._failure("DELETE", key, response)
        if response.status_code == 404 and failure.code in _MISSING_OBJECT_CODES:
            return
        raise failure

    async def presigned_url(self, key: str, ttl_s: int) -> str:
        """A GET URL for `key` on the public endpoint, valid for `ttl_s` seconds (at most a week)."""
        _check_key(key)
        return self._signer.presign_url("GET", self._url(self._public_endpoint, key), ttl_s, self._clock())

    async def check_bucket(self) -> None:
        """Raise `S3StorageError` unless the bucket exists and these credentials may use it.

        For readiness probes and start-up checks: a HEAD on the bucket, nothing is written.
        """
        response = await self._send("HEAD", self._bucket_url())
        if response.status_code != 200:
            raise S3StorageError(
                f"HEAD bucket {self._bucket}: HTTP {response.status_code}", status=response.status_code
            )

    async def aclose(self) -> None:
        """Close the HTTP client if this store built it; a client passed in belongs to the caller."""
        if self._owns_client:
            await self._client.aclose()
