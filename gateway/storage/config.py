"""`[storage]`: which blob store holds input and output images, checked and with its secrets resolved.

gateway/config.py reads the table with the rest of the settings and calls `check_storage` (before
any secret is read) and `resolve_storage_secrets` (with the environment it was given); the stores
in this package build themselves from the result.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from typing import Annotated, Literal

import msgspec

from gateway.config_types import ConfigError, PositiveFloat, Secret, check_url, env_secret

# S3 and GCS refuse presigned URLs that live longer than a week.
_MAX_PRESIGN_TTL_S = 7 * 24 * 3600
GCS_ENDPOINT = "https://storage.googleapis.com"

# Fields resolved from the environment by the loader; a config file that sets one is refused.
STORAGE_SECRETS = ("access_key", "secret_key", "account_key", "service_account_key")

# Azure's rule for container names (the hyphen rule is checked apart: no "--").
_AZURE_CONTAINER = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")
# Google's rule for bucket names: 3-63 characters (222 with dots, 63 between dots), lowercase
# letters, digits, "-", "_" and "."; a letter or digit at each end; no "goog" prefix, no "google".
_GCS_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
# Variables object_store reads that would replace the key `[storage]` names, or clash with it.
_GCS_OVERRIDING_ENV = ("GOOGLE_BEARER_TOKEN", "GOOGLE_SERVICE_ACCOUNT", "GOOGLE_SERVICE_ACCOUNT_PATH")


class StorageConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`[storage]`: where input and output images live.

    `filesystem` (the default) keeps them in `path` (default `<data_dir>/blobs`), which every
    process of one deployment must share. `s3` uses a bucket on any S3-compatible server, `azure`
    a container (`bucket`) of an Azure storage account, `gcs` a Google Cloud Storage bucket. The
    credentials come only from the environment variables named by `*_key_env`.
    """

    kind: Literal["filesystem", "s3", "azure", "gcs"] = "filesystem"
    path: str | None = None  # filesystem only
    bucket: str | None = None  # s3 and gcs: the bucket; azure: the container
    # s3: None means AWS S3 in `region`; MinIO, Ceph RGW, R2...: their URL, e.g. "http://minio:9000".
    # azure: the account's URL; None means https://<account_name>.blob.core.windows.net (Azurite:
    # "http://azurite:10000/devstoreaccount1"; sovereign clouds: their blob endpoint).
    # gcs: None means https://storage.googleapis.com; an emulator's URL in tests.
    endpoint_url: str | None = None
    region: str = "us-east-1"
    prefix: str = ""  # prepended to every key, e.g. "prod/": several deployments share a bucket
    # Path-style (`endpoint/bucket/key`) works with every S3-compatible server; AWS also takes
    # virtual-hosted style (`bucket.endpoint/key`), which bucket names with dots break under TLS.
    path_style: bool = True
    # Where vendors reach the store when that differs from the gateway's address (the host is signed).
    public_endpoint_url: str | None = None
    presign_ttl_s: Annotated[int, msgspec.Meta(ge=1, le=_MAX_PRESIGN_TTL_S)] = 3600
    request_timeout_s: PositiveFloat = 30.0
    access_key_env: str = "AWS_ACCESS_KEY_ID"
    secret_key_env: str = "AWS_SECRET_ACCESS_KEY"  # noqa: S105 (the name of a variable, not a secret)
    # Resolved from the variables above by the loader, never from the file.
    access_key: Secret | None = None
    secret_key: Secret | None = None
    account_name: str | None = None  # azure: the storage account
    account_key_env: str = "AZURE_STORAGE_KEY"  # azure: the variable holding the account key (base64)
    account_key: Secret | None = None  # resolved from `account_key_env` by the loader, never from the file
    # gcs: the variable holding a service account's JSON key (as the console downloads it).
    service_account_key_env: str = "GOOGLE_SERVICE_ACCOUNT_KEY"
    service_account_key: Secret | None = None  # its client_email and private_key, resolved by the loader

    @property
    def s3_endpoint_url(self) -> str:
        """The endpoint the gateway talks to: `endpoint_url`, or AWS S3's for `region`."""
        return self.endpoint_url or f"https://s3.{self.region}.amazonaws.com"

    @property
    def azure_account_url(self) -> str:
        """The Azure account the gateway talks to: `endpoint_url`, or Azure's public cloud for `account_name`."""
        return self.endpoint_url or f"https://{self.account_name}.blob.core.windows.net"

    @property
    def gcs_endpoint_url(self) -> str:
        """The GCS endpoint the gateway talks to: `endpoint_url`, or Google's."""
        return self.endpoint_url or GCS_ENDPOINT

    @property
    def presigns(self) -> bool:
        """Whether the store hands vendors expiring URLs of its own (the cloud stores do)."""
        return self.kind != "filesystem"

    @property
    def location(self) -> str:
        """Where the blobs are, for people: the bucket or container and its endpoint (not the folder)."""
        if self.kind == "s3":
            return f"s3 bucket {self.bucket} at {self.s3_endpoint_url}"
        if self.kind == "azure":
            return f"azure container {self.bucket} at {self.azure_account_url}"
        if self.kind == "gcs":
            return f"gcs bucket {self.bucket} at {self.gcs_endpoint_url}"
        return "filesystem"


def check_storage(storage: StorageConfig) -> None:
    """Refuse a `[storage]` table that cannot work, before any secret is read."""
    if storage.kind == "filesystem":
        return
    if not storage.bucket:
        raise ConfigError(f'storage.bucket: required when storage.kind = "{storage.kind}"')
    if storage.kind == "azure":
        if not storage.account_name:
            raise ConfigError('storage.account_name: required when storage.kind = "azure"; the storage account')
        if not _AZURE_CONTAINER.fullmatch(storage.bucket) or "--" in storage.bucket:
            raise ConfigError(
                f"storage.bucket: {storage.bucket!r} is not an Azure container name (3 to 63 lowercase "
                "letters, digits and single hyphens, starting and ending with a letter or digit)"
            )
    if storage.kind == "gcs" and not _is_gcs_bucket(storage.bucket):
        raise ConfigError(
            f"storage.bucket: {storage.bucket!r} is not a Google Cloud Storage bucket name (3 to 63 "
            "lowercase letters, digits, '-', '_' and '.', starting and ending with a letter or digit; "
            "not starting with 'goog', not containing 'google')"
        )
    for name in ("endpoint_url", "public_endpoint_url"):
        url = getattr(storage, name)
        if url is not None:
            check_url(url, f"storage.{name}")


def resolve_storage_secrets(storage: StorageConfig, environ: Mapping[str, str]) -> StorageConfig:
    """`storage` with the credentials of its kind read from the variables it names."""
    if storage.kind == "s3":
        fix = "export it with the S3 {0}, or name another variable in storage.{1}"
        return msgspec.structs.replace(
            storage,
            access_key=env_secret(
                environ, storage.access_key_env, "storage.access_key_env", fix.format("access key id", "access_key_env")
            ),
            secret_key=env_secret(
                environ, storage.secret_key_env, "storage.secret_key_env", fix.format("secret key", "secret_key_env")
            ),
        )
    if storage.kind == "azure":
        fix = "export it with the storage account's access key, or name another variable in storage.account_key_env"
        key = env_secret(environ, storage.account_key_env, "storage.account_key_env", fix)
        if key is not None and not _is_base64(key):
            raise ConfigError(
                f"storage.account_key_env: {storage.account_key_env} is not an Azure account key (base64); {fix}"
            )
        return msgspec.structs.replace(storage, account_key=key)
    if storage.kind == "gcs":
        for var in _GCS_OVERRIDING_ENV:
            if environ.get(var):
                raise ConfigError(
                    f"storage.service_account_key_env: {var} is set, and the storage library would use it "
                    f"instead of {storage.service_account_key_env} (or refuse both); unset {var}"
                )
        fix = "export it with a service account's JSON key, or name another variable in storage.service_account_key_env"
        raw = env_secret(environ, storage.service_account_key_env, "storage.service_account_key_env", fix)
        return msgspec.structs.replace(
            storage, service_account_key=_service_account_key(raw, storage.service_account_key_env, fix)
        )
    return storage


def _service_account_key(raw: Secret | None, var: str, fix: str) -> Secret | None:
    """The key's signing fields only: a key file's own `gcs_base_url` or `disable_oauth` (object_store
    honours both) must not move the store or turn its signatures off."""
    if raw is None:
        return None
    try:
        key = json.loads(raw)
    except ValueError:
        key = None
    fields = ("client_email", "private_key")
    if not isinstance(key, dict) or not all(isinstance(key.get(f), str) and key[f] for f in fields):
        raise ConfigError(
            f"storage.service_account_key_env: {var} is not a service account's JSON key "
            f"(an object with client_email and private_key); {fix}"
        )
    if not key["private_key"].lstrip().startswith("-----BEGIN"):
        raise ConfigError(f"storage.service_account_key_env: the private_key in {var} is not a PEM key; {fix}")
    kept = {name: key[name] for name in ("type", "client_email", "private_key", "private_key_id") if name in key}
    return Secret(json.dumps(kept))


def _is_gcs_bucket(name: str) -> bool:
    if not _GCS_BUCKET.fullmatch(name) or name.startswith("goog") or "google" in name:
        return False
    parts = name.split(".")
    return (len(name) <= 63 or len(parts) > 1) and all(0 < len(part) <= 63 for part in parts)


def _is_base64(value: str) -> bool:
    try:
        base64.b64decode(value, validate=True)
    except ValueError:
        return False
    return True
