"""Signed, expiring URLs at which the gateway itself serves input blobs to vendors.

Vendors that fetch inputs by URL (Qolaba) need one. The S3 store presigns its own; the filesystem
store has none, so with `public_base_url` set the gateway serves `GET /v1/blobs/{key}` itself
(gateway/api/blobs.py), but only for a URL carrying an HMAC-SHA256 over the key and the expiry.
The URL expires with the job's deadline, and the route also refuses it once the job has finished.

The key comes from GATEWAY_BLOB_SIGNING_KEY, or is generated once into `<data_dir>/blob-signing.key`;
every replica must see the same one (the shared data folder, or the variable).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

KEY_FILE = "blob-signing.key"
ROUTE = "/v1/blobs"
# Only job inputs are ever served this way; outputs go through /v1/files and its passwords.
SERVED_PREFIX = "inputs/"


def load_or_create_key(data_dir: Path, configured: str | None) -> bytes:
    """The configured key, or the one in `data_dir` (created with 32 random bytes if missing)."""
    if configured:
        return configured.encode()
    path = data_dir / KEY_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: processes starting together on one data folder must not each write their own key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with open(fd, "w") as out:
            out.write(secrets.token_hex(32))
    key = b""
    for _ in range(50):  # another process may have created the file and not yet written it
        key = path.read_bytes().strip()
        if key:
            return key
        time.sleep(0.01)
    raise RuntimeError(f"{path} is empty; delete it to generate a new blob signing key")


class BlobLinks:
    """Signs and checks the gateway's own input URLs."""

    def __init__(self, key: bytes, base_url: str, clock: Callable[[], float] = time.time) -> None:
        self._key = key
        self._base = base_url.rstrip("/")
        self._clock = clock

    def __repr__(self) -> str:
        return f"BlobLinks(base_url={self._base!r})"

    def _signature(self, blob_key: str, expires: int) -> str:
        return hmac.new(self._key, f"{blob_key}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def url(self, blob_key: str, expires_at: float) -> str:
        """A URL for `blob_key` valid until `expires_at` (Unix seconds)."""
        if not blob_key.startswith(SERVED_PREFIX):
            raise ValueError(f"only input blobs are served by URL, not {blob_key!r}")
        expires = int(expires_at) + 1  # whole seconds, rounded up: never shorter than asked
        signature = self._signature(blob_key, expires)
        return f"{self._base}{ROUTE}/{quote(blob_key)}?expires={expires}&signature={signature}"

    def valid(self, blob_key: str, expires: int, signature: str) -> bool:
        """Whether `signature` is ours for this key and expiry, and the expiry has not passed."""
        if not blob_key.startswith(SERVED_PREFIX) or expires < self._clock():
            return False
        return hmac.compare_digest(self._signature(blob_key, expires), signature)
