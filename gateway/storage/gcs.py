"""A BlobStore on Google Cloud Storage, through obstore's GCSStore (its XML API).

Requests carry a self-signed JWT made from the service account's key (no token exchange with
Google's OAuth server); vendors get V4 signed URLs (GOOG4-RSA-SHA256) for one object, signed locally
with the same key. put/get/delete/presign and the translation of failures are shared with the other
cloud stores in gateway/storage/cloud.py.

object_store signs every URL for the host storage.googleapis.com, whatever the endpoint: a
`public_endpoint_url` must therefore be GCS itself or a proxy that forwards to it (GCS checks the
signature against its own host), never another GCS-compatible service.
"""

from __future__ import annotations

from obstore.exceptions import BaseError
from obstore.store import GCSStore

from gateway.config_types import ConfigError
from gateway.storage.cloud import (
    ObjectBlobStore,
    check_endpoints,
    check_prefix,
    client_options,
    failure_text,
    retry_config,
)
from gateway.storage.config import GCS_ENDPOINT, StorageConfig


class GCSBlobStore(ObjectBlobStore):
    """The BlobStore protocol over the GCS XML API (PUT, GET and DELETE Object)."""

    kind = "gcs"

    def __init__(
        self,
        *,
        bucket: str,
        service_account_key: str,
        endpoint_url: str = GCS_ENDPOINT,
        prefix: str = "",
        public_endpoint_url: str | None = None,
        request_timeout_s: float = 30.0,
        max_attempts: int = 3,
        retry_backoff_s: float = 0.1,
    ) -> None:
        check_endpoints("GCS endpoint", endpoint_url, public_endpoint_url)
        retries = retry_config(max_attempts, retry_backoff_s, request_timeout_s)
        key_prefix = check_prefix(prefix)
        self._endpoint = endpoint_url.rstrip("/")
        self._bucket = bucket

        def build(url: str) -> GCSStore:
            return GCSStore(
                bucket,
                # GCSStore also reads GOOGLE_* variables: the key and the endpoint given here win
                # over GOOGLE_SERVICE_ACCOUNT_KEY, GOOGLE_BASE_URL and GOOGLE_APPLICATION_CREDENTIALS;
                # the loader refuses GOOGLE_BEARER_TOKEN and GOOGLE_SERVICE_ACCOUNT(_PATH), which would not.
                service_account_key=service_account_key,
                base_url=url,
                skip_signature=False,
                prefix=key_prefix,
                client_options=client_options(url, request_timeout_s),
                retry_config=retries,
            )

        public = (public_endpoint_url or endpoint_url).rstrip("/")
        try:
            store = build(self._endpoint)
        except BaseError as exc:  # object_store reads the private key here: the one thing left to refuse
            raise ConfigError(
                "storage.service_account_key_env: the service account's private_key is not a usable key "
                f"({failure_text(exc)})"
            ) from exc
        super().__init__(store, public_store=None if public == self._endpoint else build(public), where=bucket)

    @classmethod
    def from_config(cls, config: StorageConfig) -> GCSBlobStore:
        """A store for `[storage]` with kind "gcs"; `load_settings` has checked it and resolved the key."""
        if not config.bucket:
            raise ValueError("storage.bucket is required for a GCS store")
        if config.service_account_key is None:
            raise ValueError("the service account key was not resolved from storage.service_account_key_env")
        return cls(
            bucket=config.bucket,
            service_account_key=config.service_account_key,
            endpoint_url=config.gcs_endpoint_url,
            prefix=config.prefix,
            public_endpoint_url=config.public_endpoint_url,
            request_timeout_s=config.request_timeout_s,
        )

    def __repr__(self) -> str:
        return f"GCSBlobStore(endpoint={self._endpoint!r}, bucket={self._bucket!r})"
