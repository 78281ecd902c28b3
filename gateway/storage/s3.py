"""A BlobStore on any S3-compatible server (AWS S3, MinIO, Ceph RGW, R2...), through obstore's S3Store.

SigV4 signing, presigned URLs and path- or virtual-hosted-style addressing are obstore's (issue #25
replaced a hand-written signer and client); put/get/delete/presign and the translation of failures
(`BlobNotFound`, or `StorageError` with the HTTP status and the S3 error code) are shared with the
other cloud stores in gateway/storage/cloud.py. This module pins where and how S3Store talks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from obstore.store import S3Store

from gateway.storage.cloud import (
    ObjectBlobStore,
    StorageError,
    check_endpoints,
    check_prefix,
    client_options,
    retry_config,
)
from gateway.storage.config import StorageConfig

if TYPE_CHECKING:
    from obstore.store import S3Credential  # a TypedDict, not importable at run time

# The name the S3 store's errors had before Azure joined; one class for every cloud store.
S3StorageError = StorageError


class S3BlobStore(ObjectBlobStore):
    """The BlobStore protocol over the S3 REST API (PutObject, GetObject, DeleteObject)."""

    kind = "s3"

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
        check_endpoints("S3 endpoint", endpoint_url, public_endpoint_url)
        retries = retry_config(max_attempts, retry_backoff_s, request_timeout_s)
        key_prefix = check_prefix(prefix)
        self._endpoint = endpoint_url.rstrip("/")
        self._bucket = bucket

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
                prefix=key_prefix,
                client_options=client_options(endpoint, request_timeout_s),
                retry_config=retries,
            )

        store = build(self._endpoint)
        # Vendors may reach the store at another address; the host is part of the signature.
        public = (public_endpoint_url or endpoint_url).rstrip("/")
        super().__init__(store, public_store=None if public == self._endpoint else build(public), where=bucket)

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
