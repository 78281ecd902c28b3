"""A BlobStore on any S3-compatible server (AWS S3, MinIO, Ceph RGW, R2...), through obstore.

obstore binds Apache Arrow's Rust `object_store` crate: SigV4 signing, presigned URLs, retries
with backoff on connection errors and 5xx answers, and path- or virtual-hosted-style addressing
are the library's (issue #25 replaced a hand-written signer and client). What stays here is the
translation of its failures into this project's terms, once: a missing object is `BlobNotFound`;
everything else is `S3StorageError`, with the HTTP status and the S3 error code when the server
answered.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import obstore
from obstore.exceptions import BaseError
from obstore.store import S3Store

from gateway.config import StorageConfig
from gateway.observability.tracing import child_span
from gateway.storage.base import BlobNotFound

if TYPE_CHECKING:
    from obstore.store import S3Credential  # a TypedDict, not importable at run time

# object_store reports an answered request as "... status code: 404 Not Found ..." and carries
# the body of an S3 error document along; its text is the only place the status and code are
# (obstore is pinned exactly; tests/unit/storage/test_s3_store.py checks this parse).
_STATUS = re.compile(r"status(?: code)?:? (\d{3})\b")
_CODE = re.compile(r"<Code>\s*([A-Za-z0-9.]+)\s*</Code>")
# obstore raises the builtin FileNotFoundError for a 404, its own BaseError family for the rest.
_FAILURES = (BaseError, FileNotFoundError)
# object_store's backoff panics on an empty range; a millisecond is "no wait" for every test.
_MIN_BACKOFF_S = 0.001


class S3StorageError(Exception):
    """The S3-compatible store refused or failed a request (anything but a missing object)."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status  # None when no HTTP answer came (connection, timeout)
        self.code = code  # the S3 error code, e.g. "AccessDenied", "SignatureDoesNotMatch"


def _translate(operation: str, key: str, exc: Exception) -> S3StorageError:
    # The message's first part names the request and S3's answer; a Rust debug dump follows it.
    text = str(exc).split("\n\nDebug source:", 1)[0].strip()
    status = _STATUS.search(text)
    code = _CODE.search(text)
    return S3StorageError(
        f"{operation} {key}: {text}",
        status=int(status[1]) if status else None,
        code=code[1] if code else None,
    )


def _is_missing_object(exc: Exception, failure: S3StorageError) -> bool:
    # A 404 that names anything but NoSuchKey (a missing bucket above all) is a deployment fault,
    # not a missing blob, and must not read as one. No code at all: a server that sends none.
    return failure.code == "NoSuchKey" or (isinstance(exc, FileNotFoundError) and failure.code is None)


def _check_key(key: str) -> None:
    # Keys are the gateway's own ("outputs/<job>/<run>-0.png"); anything a URL path would
    # normalise, or that object_store would read as another path, is a caller's bug.
    if not key or key.startswith("/") or any(part in {"", ".", ".."} for part in key.split("/")):
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
        request_timeout_s: float = 30.0,
        max_attempts: int = 3,
        retry_backoff_s: float = 0.1,
    ) -> None:
        for url in (endpoint_url, public_endpoint_url):
            if url is not None and urlsplit(url).scheme not in {"http", "https"}:
                raise ValueError(f"S3 endpoint must be an http(s) URL, got {url!r}")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        backoff_s = max(retry_backoff_s, _MIN_BACKOFF_S)
        if prefix.startswith("/") or any(part in {".", ".."} for part in prefix.split("/")):
            raise ValueError(f"invalid key prefix {prefix!r}")
        self._endpoint = endpoint_url.rstrip("/")
        self._bucket = bucket
        self._prefix = prefix

        credential: S3Credential = {"access_key_id": access_key, "secret_access_key": secret_key, "expires_at": None}

        def build(endpoint: str) -> S3Store:
            if not path_style:
                # object_store takes a virtual-hosted endpoint with the bucket already in the host.
                parts = urlsplit(endpoint)
                endpoint = f"{parts.scheme}://{bucket}.{parts.netloc}{parts.path}"
            return S3Store(
                bucket,
                # S3Store also reads AWS_* variables, and AWS_ENDPOINT_URL_S3 would win over
                # `endpoint`: every setting that decides where and how a request goes is pinned
                # here, and the credentials come from a provider (no AWS_SESSION_TOKEN joins them).
                endpoint=endpoint,
                aws_endpoint_url_s3=endpoint,
                region=region,
                virtual_hosted_style_request=not path_style,
                skip_signature=False,
                unsigned_payload=False,
                s3_express=False,
                request_payer=False,
                # One DELETE per key, as every S3-compatible server speaks it (not DeleteObjects).
                disable_bulk_delete=True,
                credential_provider=lambda: credential,
                # A prefix of "prod/" is a folder to object_store, which joins it with a "/".
                prefix=prefix.rstrip("/") or None,
                client_options={
                    "allow_http": urlsplit(endpoint).scheme == "http",
                    "timeout": timedelta(seconds=request_timeout_s),
                    "connect_timeout": timedelta(seconds=min(5.0, request_timeout_s)),
                },
                retry_config={
                    "max_retries": max_attempts - 1,
                    "backoff": {
                        "init_backoff": timedelta(seconds=backoff_s),
                        "max_backoff": timedelta(seconds=max(backoff_s, 5.0)),
                        "base": 2,
                    },
                    # Bounds the whole call; retries reuse one signature, valid for 15 minutes.
                    "retry_timeout": timedelta(seconds=max_attempts * (request_timeout_s + 5.0)),
                },
            )

        self._store = build(self._endpoint)
        # Vendors may reach the store at another address; the host is part of the signature.
        public = (public_endpoint_url or endpoint_url).rstrip("/")
        self._public_store = self._store if public == self._endpoint else build(public)

    @classmethod
    def from_config(cls, config: StorageConfig) -> S3BlobStore:
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
            request_timeout_s=config.request_timeout_s,
        )

    def __repr__(self) -> str:
        return f"S3BlobStore(endpoint={self._endpoint!r}, bucket={self._bucket!r})"

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store `data` under `key`; the payload hash is signed, so S3 rejects a corrupted upload."""
        _check_key(key)
        with child_span("blob.put", {"gateway.blob.store": "s3", "gateway.blob.bytes": len(data)}):
            try:
                await obstore.put_async(self._store, key, data, attributes={"Content-Type": content_type})
            except _FAILURES as exc:
                raise _translate("PUT", key, exc) from exc

    async def get(self, key: str) -> bytes:
        """The bytes under `key`; `BlobNotFound` when S3 has no such object."""
        _check_key(key)
        try:
            result = await obstore.get_async(self._store, key)
            return bytes(await result.bytes_async())
        except _FAILURES as exc:
            failure = _translate("GET", key, exc)
            if _is_missing_object(exc, failure):
                raise BlobNotFound(key) from exc
            raise failure from exc

    async def delete(self, key: str) -> None:
        """Remove `key`; no error when it is already gone (AWS answers 204, some servers 404)."""
        _check_key(key)
        try:
            await obstore.delete_async(self._store, key)
        except _FAILURES as exc:
            failure = _translate("DELETE", key, exc)
            if _is_missing_object(exc, failure):
                return
            raise failure from exc

    async def presigned_url(self, key: str, ttl_s: int) -> str:
        """A GET URL for `key` on the public endpoint, valid for `ttl_s` seconds (at most a week).

        Signed locally: no request is made.
        """
        _check_key(key)
        try:
            return await obstore.sign_async(self._public_store, "GET", key, timedelta(seconds=ttl_s))
        except _FAILURES as exc:
            raise _translate("SIGN", key, exc) from exc

    async def check_bucket(self) -> None:
        """Raise `S3StorageError` unless the bucket exists and these credentials may list it.

        For readiness probes and start-up checks: one ListObjectsV2 request, nothing is written.
        """
        try:
            async for _ in obstore.list(self._store, chunk_size=1):
                break
        except _FAILURES as exc:
            raise _translate("LIST", self._bucket, exc) from exc

    async def aclose(self) -> None:
        """Nothing to release: object_store's connection pool goes with the store."""
