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
    files = [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]
    assert [p.name for p in files] == [f"job-{size}%2Frun-0.png"]


async def test_blobs_of_many_jobs_share_a_few_fan_out_folders_instead_of_one_each(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path)
    keys = [f"outputs/{i:04d}/run-0.png" for i in range(600)] + ["outputs/0001%2Frun-0.png", "loose.bin"]
    for key in keys:
        await store.put(key, key.encode(), "image/png")
    for key in keys:  # escaped names never collide, not even with a key that looks escaped
        assert await store.get(key) == key.encode()
    folders = [p for p in tmp_path.rglob("*") if p.is_dir()]
    assert len(folders) <= 2 + 2 * 256  # outputs/ and the folder-less keys' %/, each with <= 256 fan-outs
    assert not (tmp_path / "outputs" / "0001").exists()


async def test_a_blob_written_in_the_old_layout_is_still_read_and_deleted(tmp_path: Path) -> None:
    (tmp_path / "outputs" / "job-1").mkdir(parents=True)
    (tmp_path / "outputs" / "job-1" / "run-0.png").write_bytes(b"old layout")
    store = FilesystemBlobStore(tmp_path)
    assert await store.get("outputs/job-1/run-0.png") == b"old layout"
    await store.delete("outputs/job-1/run-0.png")
    assert not (tmp_path / "outputs" / "job-1" / "run-0.png").exists()
    with pytest.raises(BlobNotFound):
        await store.get("outputs/job-1/run-0.png")


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
