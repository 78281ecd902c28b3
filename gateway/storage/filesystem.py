"""Blobs in a local folder (the default). Writes are atomic: temp file, then rename.

Layout: a key `outputs/<job>/<run>-0.png` lives at `<root>/outputs/<2 hex>/<job>%2F<run>-0.png`:
under its first folder, in one of 256 fan-out folders picked by a hash of the key, with the rest of
the key as one escaped file name. Keys name a folder per job, and creating that folder was half of
what a blob write cost (mkdir is the dearest file operation; on the development VM's disk 20 µs to
over 1 ms under PostgreSQL's write load). Fan-out folders are made once. Blobs written by earlier
versions, at `<root>/<key>`, are still read and deleted there.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
from pathlib import Path

from gateway.observability.tracing import child_span
from gateway.storage.base import BlobNotFound

# Blobs up to this size are written on the event loop. Measured here (ext4, page cache): writing a
# blob of up to 64 KiB (temp file, rename) costs 90-100 µs, while `asyncio.to_thread` costs about
# 80 µs of CPU for the hop alone, on top of the same write in the thread. Bigger blobs take the
# thread, so a multi-megabyte image does not stall every other request for a millisecond or more.
INLINE_WRITE_MAX_BYTES = 64 * 1024


_writes = itertools.count()


def _escape(part: str) -> str:
    """One file name for a part of a key: `%` first, then the separators."""
    return part.replace("%", "%25").replace(os.sep, "%2F")


class FilesystemBlobStore:
    """A BlobStore over `root`. Keys are relative paths; `..` and absolute keys are refused."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._inside = str(self.root) + os.sep

    def _legacy(self, key: str) -> str:
        # Checked lexically: `resolve()` costs an lstat per path component, about 30 µs a key here,
        # as much as writing a small blob. Keys are the gateway's own (ids, run tokens); a symlink
        # inside the data folder could only have been put there by its operator.
        path = os.path.normpath(os.path.join(self.root, key))
        if not path.startswith(self._inside):
            raise ValueError(f"invalid blob key {key!r}")
        return path

    def _locations(self, key: str) -> tuple[str, str]:
        """Where `key` is written, and where versions before the fan-out layout wrote it."""
        legacy = self._legacy(key)
        relative = legacy[len(self._inside) :]
        top, _, rest = relative.partition(os.sep)
        # Escaped so that no two keys share a path: a key without a folder goes under `%`, which no
        # escaped folder name can be.
        folder = _escape(top) if rest else "%"
        fan = hashlib.blake2b(relative.encode(), digest_size=1).hexdigest()
        return os.path.join(self.root, folder, fan, _escape(rest or top)), legacy

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        path, _ = self._locations(key)
        with child_span("blob.put", {"gateway.blob.store": "filesystem", "gateway.blob.bytes": len(data)}):
            if len(data) <= INLINE_WRITE_MAX_BYTES:
                self._write(path, data)
            else:
                await asyncio.to_thread(self._write, path, data)

    @staticmethod
    def _write(path: str, data: bytes) -> None:
        # Unique per write: two puts of one key at once (two first downloads of a zip) must not
        # write into the same temporary file.
        tmp = f"{path}.{os.getpid()}-{next(_writes)}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        try:
            fd = os.open(tmp, flags, 0o644)
        except FileNotFoundError:  # the first blob of its fan-out folder
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(tmp, flags, 0o644)
        with open(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)

    async def get(self, key: str) -> bytes:
        path, legacy = self._locations(key)
        return await asyncio.to_thread(self._read, key, path, legacy)

    @staticmethod
    def _read(key: str, path: str, legacy: str) -> bytes:
        for candidate in (path, legacy):
            try:
                with open(candidate, "rb") as blob:
                    return blob.read()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                continue
        raise BlobNotFound(key)

    async def delete(self, key: str) -> None:
        path, legacy = self._locations(key)
        await asyncio.to_thread(self._unlink, path, legacy)

    @staticmethod
    def _unlink(*paths: str) -> None:
        for path in paths:
            with contextlib.suppress(FileNotFoundError, IsADirectoryError, NotADirectoryError):
                os.unlink(path)

    async def presigned_url(self, key: str, ttl_s: int) -> str | None:
        return None

    async def aclose(self) -> None:
        return None
