"""The BlobStore protocol over any obstore store: S3-compatible servers, Azure Blob Storage and GCS.

obstore binds Apache Arrow's Rust `object_store` crate: request signing, presigned URLs (SigV4 for
S3, a service SAS for Azure, V4 RSA signatures for GCS), retries with backoff on connection errors
and 5xx answers are the library's. What this module adds, once for every kind, is the translation
of its failures into this project's terms: a missing object is `BlobNotFound`; everything else is
`StorageError`, with the HTTP status and the service's error code when the server answered.
gateway/storage/s3.py, azure.py and gcs.py only build the obstore store from `[storage]`.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import obstore
from obstore.exceptions import BaseError

from gateway.observability.tracing import child_span
from gateway.storage.base import BlobNotFound

if TYPE_CHECKING:
    from typing import TypeAlias

    from obstore.store import AzureStore, ClientConfig, GCSStore, RetryConfig, S3Store  # TypedDicts: type-checking only

    CloudStore: TypeAlias = S3Store | AzureStore | GCSStore

# object_store reports an answered request as "... status code: 404 Not Found ..." and carries
# the body of the service's XML error document along (S3, Azure and GCS all send `<Code>`); its text
# is the only place the status and code are (obstore is pinned exactly; the unit tests check this).
_STATUS = re.compile(r"status(?: code)?:? (\d{3})\b|\(code: (\d{3})\)")
_CODE = re.compile(r"<Code>\s*([A-Za-z0-9.]+)\s*</Code>")
# Azure's delete goes through its batch API, whose per-blob answer obstore reports as "<reason>
# (code: 404)": no error code, only Azure's documented message for it.
_AZURE_REASONS = {
    "The specified blob does not exist.": "BlobNotFound",
    "The specified container does not exist.": "ContainerNotFound",
}
# obstore raises the builtin FileNotFoundError for a 404, its own BaseError family for the rest.
_FAILURES = (BaseError, FileNotFoundError)
# The codes that mean "no such object": S3's and GCS's, and Azure's. A 404 with any other code (a
# missing bucket or container above all) is a deployment fault and must not read as a missing blob.
_MISSING_OBJECT_CODES = frozenset({"NoSuchKey", "BlobNotFound"})
# object_store's backoff panics on an empty range; a millisecond is "no wait" for every test.
_MIN_BACKOFF_S = 0.001


class StorageError(Exception):
    """The object store refused or failed a request (anything but a missing object)."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status  # None when no HTTP answer came (connection, timeout)
        self.code = code  # the service's error code, e.g. "AccessDenied", "AuthorizationFailure"


def failure_text(exc: Exception) -> str:
    """What an obstore error says, without the Rust debug dump that follows it."""
    return str(exc).split("\n\nDebug source:", 1)[0].strip()


def _translate(operation: str, key: str, exc: Exception) -> StorageError:
    # The message's first part names the request and the service's answer.
    text = failure_text(exc)
    status = _STATUS.search(text)
    code = _CODE.search(text)
    reason = next((c for reason, c in _AZURE_REASONS.items() if f"{reason} (code: " in text), None)
    return StorageError(
        f"{operation} {key}: {text}",
        status=int(status[1] or status[2]) if status else None,
        code=code[1] if code else reason,
    )


def _is_missing_object(exc: Exception, failure: StorageError) -> bool:
    # No code at all: a server that sends none with its 404.
    return failure.code in _MISSING_OBJECT_CODES or (isinstance(exc, FileNotFoundError) and failure.code is None)


def check_key(key: str) -> None:
    """Refuse a key a URL path would normalise, or that object_store would read as another path.

    Keys are the gateway's own ("outputs/<job>/<run>-0.png"): a bad one is a caller's bug.
    """
    if not key or key.startswith("/") or any(part in {"", ".", ".."} for part in key.split("/")):
        raise ValueError(f"invalid blob key {key!r}")


def check_prefix(prefix: str) -> str | None:
    """The prefix as object_store takes it (None for none), or ValueError when it escapes or normalises."""
    if prefix.startswith("/") or any(part in {".", ".."} for part in prefix.split("/")):
        raise ValueError(f"invalid key prefix {prefix!r}")
    # A prefix of "prod/" is a folder to object_store, which joins it with a "/".
    return prefix.rstrip("/") or None


def check_endpoints(what: str, *urls: str | None) -> None:
    """Refuse an endpoint that is not an http(s) URL (None: not configured); `what` names it."""
    for url in urls:
        if url is not None and urlsplit(url).scheme not in {"http", "https"}:
            raise ValueError(f"{what} must be an http(s) URL, got {url!r}")


def client_options(endpoint: str, request_timeout_s: float) -> ClientConfig:
    """The HTTP client settings every store shares: plain HTTP only for an http:// endpoint."""
    return {
        "allow_http": urlsplit(endpoint).scheme == "http",
        "timeout": timedelta(seconds=request_timeout_s),
        "connect_timeout": timedelta(seconds=min(5.0, request_timeout_s)),
    }


def retry_config(max_attempts: int, retry_backoff_s: float, request_timeout_s: float) -> RetryConfig:
    """Retries of connection errors and 5xx answers: `max_attempts` in all, exponential backoff."""
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    backoff_s = max(retry_backoff_s, _MIN_BACKOFF_S)
    return {
        "max_retries": max_attempts - 1,
        "backoff": {
            "init_backoff": timedelta(seconds=backoff_s),
            "max_backoff": timedelta(seconds=max(backoff_s, 5.0)),
            "base": 2,
        },
        # Bounds the whole call; retries reuse one signature, valid for 15 minutes.
        "retry_timeout": timedelta(seconds=max_attempts * (request_timeout_s + 5.0)),
    }


class ObjectBlobStore:
    """put/get/delete/presign on one obstore store; subclasses build the store from `[storage]`."""

    kind = "object"  # the `gateway.blob.store` span attribute; each subclass names its own

    def __init__(self, store: CloudStore, *, public_store: CloudStore | None = None, where: str) -> None:
        self._store = store
        # Vendors may reach the store at another address than the gateway does: presign for that one.
        self._public_store = public_store if public_store is not None else store
        self._where = where  # the bucket or container, in errors of check_bucket

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store `data` under `key`; the service checks the signed request, so a corrupted upload fails."""
        check_key(key)
        with child_span("blob.put", {"gateway.blob.store": self.kind, "gateway.blob.bytes": len(data)}):
            try:
                await obstore.put_async(self._store, key, data, attributes={"Content-Type": content_type})
            except _FAILURES as exc:
                raise _translate("PUT", key, exc) from exc

    async def get(self, key: str) -> bytes:
        """The bytes under `key`; `BlobNotFound` when the store has no such object."""
        check_key(key)
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
        check_key(key)
        try:
            await obstore.delete_async(self._store, key)
        except _FAILURES as exc:
            failure = _translate("DELETE", key, exc)
            if _is_missing_object(exc, failure):
                return
            raise failure from exc

    async def presigned_url(self, key: str, ttl_s: int) -> str:
        """A GET URL for `key` on the public endpoint, valid for `ttl_s` seconds (at most a week).

        Signed locally with the configured key: no request is made.
        """
        check_key(key)
        try:
            return await obstore.sign_async(self._public_store, "GET", key, timedelta(seconds=ttl_s))
        except _FAILURES as exc:
            raise _translate("SIGN", key, exc) from exc

    async def check_bucket(self) -> None:
        """Raise `StorageError` unless the bucket (container) exists and these credentials may list it.

        For readiness probes and start-up checks: one list request, nothing is written.
        """
        try:
            async for _ in obstore.list(self._store, chunk_size=1):
                break
        except _FAILURES as exc:
            raise _translate("LIST", self._where, exc) from exc

    async def aclose(self) -> None:
        """Nothing to release: object_store's connection pool goes with the store."""
