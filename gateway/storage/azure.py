"""A BlobStore on Azure Blob Storage (or Azurite, or a sovereign cloud), through obstore's AzureStore.

Requests are signed with the storage account's shared key; vendors get read-only service SAS URLs
for one blob, signed locally with the same key. put/get/delete/presign and the translation of
failures are shared with the S3 store in gateway/storage/cloud.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from obstore.store import AzureStore

from gateway.storage.cloud import ObjectBlobStore, check_endpoints, check_prefix, client_options, retry_config
from gateway.storage.config import StorageConfig

if TYPE_CHECKING:
    from obstore.store import AzureAccessKey  # a TypedDict, not importable at run time


class AzureBlobStore(ObjectBlobStore):
    """The BlobStore protocol over the Azure Blob REST API (Put Blob, Get Blob, Delete Blob)."""

    kind = "azure"

    def __init__(
        self,
        *,
        account_url: str,
        container: str,
        account_name: str,
        account_key: str,
        prefix: str = "",
        public_account_url: str | None = None,
        request_timeout_s: float = 30.0,
        max_attempts: int = 3,
        retry_backoff_s: float = 0.1,
    ) -> None:
        check_endpoints("Azure account URL", account_url, public_account_url)
        retries = retry_config(max_attempts, retry_backoff_s, request_timeout_s)
        key_prefix = check_prefix(prefix)
        self._account_url = account_url.rstrip("/")
        self._container = container

        credential: AzureAccessKey = {"access_key": account_key, "expires_at": None}

        def build(url: str) -> AzureStore:
            return AzureStore(
                container,
                # AzureStore also reads AZURE_* variables: everything that decides where the
                # requests go and as whom is pinned here, and the key comes from a provider, which
                # wins over any token or SAS in the environment. `endpoint` is the account's URL
                # (Azurite's has the account in its path); the emulator switch would ignore it.
                endpoint=url,
                account_name=account_name,
                credential_provider=lambda: credential,
                use_emulator=False,
                use_fabric_endpoint=False,
                skip_signature=False,
                prefix=key_prefix,
                client_options=client_options(url, request_timeout_s),
                retry_config=retries,
            )

        public = (public_account_url or account_url).rstrip("/")
        super().__init__(
            build(self._account_url),
            public_store=None if public == self._account_url else build(public),
            where=container,
        )

    @classmethod
    def from_config(cls, config: StorageConfig) -> AzureBlobStore:
        """A store for `[storage]` with kind "azure"; `load_settings` has checked it and resolved the key."""
        if not config.bucket or not config.account_name:
            raise ValueError("storage.bucket and storage.account_name are required for an Azure store")
        if config.account_key is None:
            raise ValueError("the Azure account key was not resolved from storage.account_key_env")
        return cls(
            account_url=config.azure_account_url,
            container=config.bucket,
            account_name=config.account_name,
            account_key=config.account_key,
            prefix=config.prefix,
            public_account_url=config.public_endpoint_url,
            request_timeout_s=config.request_timeout_s,
        )

    def __repr__(self) -> str:
        return f"AzureBlobStore(account_url={self._account_url!r}, container={self._container!r})"
