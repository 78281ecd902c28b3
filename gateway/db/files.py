"""SQL for output files and their download-password attempt counters.

Wrong guesses are counted per file and per job (one password guards all of a job's files), each
in a window that starts at its first failure. An attempt is reserved before its password is hashed,
under the rows' locks, so concurrent requests can never try more than the limit between them;
a request that finds the right password gives back what it reserved beyond its wrong guesses.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import msgspec

from gateway.db import Conn, require_tenant


class StoredFile(msgspec.Struct, frozen=True, kw_only=True):
    """A file as a download needs it; `password_hash` is its job's (None: not protected)."""

    id: str
    job_id: UUID
    blob_key: str
    content_type: str
    etag: str
    filename: str
    expired: bool
    password_hash: str | None


class Reservation(msgspec.Struct, frozen=True, kw_only=True):
    """Attempts granted to one request (0: locked out for `retry_after_s` more seconds)."""

    granted: int
    retry_after_s: int


class JobImage(msgspec.Struct, frozen=True, kw_only=True):
    blob_key: str
    filename: str
    expires_at: datetime


async def file_for_download(conn: Conn, file_id: str) -> StoredFile | None:
    row = await conn.fetchrow(
        """SELECT f.id, f.job_id, f.blob_key, f.content_type, f.etag, f.filename, f.expires_at < now() AS expired,
                  j.download_password_hash AS password_hash
           FROM files f JOIN jobs j ON j.id = f.job_id WHERE f.id = $1""",
        file_id,
    )
    return None if row is None else StoredFile(**dict(row))


_LOCK_JOB = """
SELECT CASE WHEN download_failures_since > now() - make_interval(secs => $2)
            THEN download_failures ELSE 0 END AS recent,
       extract(epoch FROM (download_failures_since + make_interval(secs => $2) - now()))::int AS left_s
FROM jobs WHERE id = $1 FOR UPDATE
"""

_LOCK_FILE = """
SELECT CASE WHEN failures_since > now() - make_interval(secs => $3) THEN failed_attempts ELSE 0 END AS recent,
       extract(epoch FROM (failures_since + make_interval(secs => $3) - now()))::int AS left_s
FROM files WHERE id = $1 AND job_id = $2 FOR UPDATE
"""

# A window that has run out starts again at the first failure counted in it.
_COUNT_JOB = """
UPDATE jobs SET
    download_failures = $2,
    download_failures_since = CASE WHEN download_failures_since > now() - make_interval(secs => $3)
                                   THEN download_failures_since ELSE now() END
WHERE id = $1
"""

_COUNT_FILE = """
UPDATE files SET
    failed_attempts = $2,
    failures_since = CASE WHEN failures_since > now() - make_interval(secs => $3) THEN failures_since ELSE now() END
WHERE id = $1
"""


async def reserve_attempts(
    conn: Conn, *, job_id: UUID, file_id: str | None, wanted: int, limit: int, window_s: int
) -> Reservation:
    """Count up to `wanted` failures in advance against the job (and the file, when given), as many as
    both counters still allow within `limit` per `window_s`. Runs in its own transaction; the job
    row's lock (taken before the file's, always) serializes reservations for every file of the job."""
    async with conn.transaction():
        job = await conn.fetchrow(_LOCK_JOB, job_id, window_s)
        if job is None:
            return Reservation(granted=0, retry_after_s=0)
        counters = [(job["recent"], job["left_s"])]
        if file_id is not None:
            file = await conn.fetchrow(_LOCK_FILE, file_id, job_id, window_s)
            if file is not None:
                counters.append((file["recent"], file["left_s"]))
        granted = max(0, min(wanted, *(limit - recent for recent, _ in counters)))
        if granted == 0:
            return Reservation(
                granted=0, retry_after_s=max([1, *((left or 1) for recent, left in counters if recent >= limit)])
            )
        await conn.execute(_COUNT_JOB, job_id, counters[0][0] + granted, window_s)
        if len(counters) > 1:
            await conn.execute(_COUNT_FILE, file_id, counters[1][0] + granted, window_s)
    return Reservation(granted=granted, retry_after_s=0)


async def release_attempts(conn: Conn, *, job_id: UUID, file_id: str | None, count: int) -> None:
    """Give back `count` reserved attempts that turned out not to be failures (the right password,
    and the candidates after it that were never tried)."""
    if count <= 0:
        return
    async with conn.transaction():  # the job's row first, as in `reserve_attempts`
        await conn.execute(
            "UPDATE jobs SET download_failures = greatest(0, download_failures - $2) WHERE id = $1", job_id, count
        )
        if file_id is not None:
            await conn.execute(
                "UPDATE files SET failed_attempts = greatest(0, failed_attempts - $2) WHERE id = $1", file_id, count
            )


async def job_password(conn: Conn, job_id: UUID, tenant_id: UUID) -> tuple[str, str | None] | None:
    """The tenant's job's state and download password hash; None when it is not the tenant's."""
    row = await conn.fetchrow(
        "SELECT state, download_password_hash FROM jobs WHERE id = $1 AND tenant_id = $2",
        job_id,
        require_tenant(tenant_id),
    )
    return None if row is None else (row["state"], row["download_password_hash"])


async def zip_of(conn: Conn, job_id: UUID) -> str | None:
    """The id of the job's zip file, if it was made."""
    file_id: str | None = await conn.fetchval("SELECT id FROM files WHERE job_id = $1 AND kind = 'zip'", job_id)
    return file_id


async def job_images(conn: Conn, job_id: UUID) -> list[JobImage]:
    """The job's images in result order."""
    rows = await conn.fetch(
        """SELECT f.blob_key, f.filename, f.expires_at
           FROM files f JOIN job_results r ON r.file_id = f.id
           WHERE f.job_id = $1 AND f.kind = 'image' ORDER BY r.index""",
        job_id,
    )
    return [JobImage(**dict(r)) for r in rows]


async def image_blob_keys(conn: Conn, job_id: UUID) -> dict[str, str]:
    """The blob key of each of the job's images, by file id."""
    rows = await conn.fetch("SELECT id, blob_key FROM files WHERE job_id = $1 AND kind = 'image'", job_id)
    return {row["id"]: row["blob_key"] for row in rows}


async def insert_zip_once(
    conn: Conn, *, file_id: str, job_id: UUID, blob_key: str, size: int, etag: str, filename: str, expires_at: datetime
) -> str:
    """Record the job's zip file unless a concurrent request did first; returns the zip's id either way.
    The job row lock makes concurrent first requests agree on one zip file."""
    async with conn.transaction():
        await conn.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", job_id)
        existing = await zip_of(conn, job_id)
        if existing is not None:
            return existing
        await conn.execute(
            """INSERT INTO files (id, tenant_id, job_id, kind, blob_key, content_type, size, etag, filename, expires_at)
               SELECT $1, tenant_id, id, 'zip', $3, 'application/zip', $4, $5, $6, $7 FROM jobs WHERE id = $2""",
            file_id,
            job_id,
            blob_key,
            size,
            etag,
            filename,
            expires_at,
        )
    return file_id
