"""The blob store protocol: where input and output images live (a folder, or S3-compatible)."""

from __future__ import annotations

from typing import Protocol


class BlobNotFound(Exception):
    """No blob under that key."""


class BlobStore(Protocol):
    """Content-addressed by the caller: keys are opaque strings such as `outputs/<job>/<n>.png`."""

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store `data` under `key`, replacing what was there."""
        ...

    async def get(self, key: str) -> bytes:
        """The bytes under `key`; raises `BlobNotFound`."""
        ...

    async def delete(self, key: str) -> None:
        """Remove `key`; no error when it is already gone."""
        ...

    async def presigned_url(self, key: str, ttl_s: int) -> str | None:
        """An expiring URL a vendor can fetch `key` from, or None when the store has none
        (the gateway then signs a URL to its own /v1/blobs endpoint)."""
        ...

    async def aclose(self) -> None:
        """Release clients the store holds."""
        ...
