"""The local blob store: blobs written on the event loop and blobs written in a thread behave alike."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.storage.base import BlobNotFound
from gateway.storage.filesystem import INLINE_WRITE_MAX_BYTES, FilesystemBlobStore


@pytest.mark.parametrize("size", [0, 200, INLINE_WRITE_MAX_BYTES, INLINE_WRITE_MAX_BYTES + 1, 1 << 20])
async def test_blob_reads_back_what_was_written_whatever_its_size(tmp_path: Path, size: int) -> None:
    store = FilesystemBlobStore(tmp_path / "blobs")
    data = os.urandom(size)
    await store.put(f"outputs/job-{size}/run-0.png", data, "image/png")
    assert await store.get(f"outputs/job-{size}/run-0.png") == data
    # The write went through a temporary file and a rename; none is left behind.
    assert [p.name for p in (tmp_path / "blobs" / "outputs" / f"job-{size}").iterdir()] == ["run-0.png"]


@pytest.mark.parametrize("size", [100, INLINE_WRITE_MAX_BYTES + 1])
async def test_putting_a_key_again_replaces_the_blob(tmp_path: Path, size: int) -> None:
    store = FilesystemBlobStore(tmp_path)
    await store.put("a/b.bin", b"old", "application/octet-stream")
    await store.put("a/b.bin", b"n" * size, "application/octet-stream")
    assert await store.get("a/b.bin") == b"n" * size


@pytest.mark.parametrize("key", ["../escape.png", "/etc/passwd", "a/../../escape.png", "", "a/..", "."])
async def test_keys_outside_the_root_are_refused_before_anything_is_written(tmp_path: Path, key: str) -> None:
    store = FilesystemBlobStore(tmp_path / "blobs")
    with pytest.raises(ValueError, match="invalid blob key"):
        await store.put(key, b"x", "image/png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blobs"]
    assert list((tmp_path / "blobs").iterdir()) == []


async def test_a_deleted_blob_is_not_found(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path)
    await store.put("x/y.png", b"png", "image/png")
    await store.delete("x/y.png")
    with pytest.raises(BlobNotFound):
        await store.get("x/y.png")
