"""GET /v1/files/{id}: the image, behind an optional download password.
GET /v1/jobs/{id}/files.zip: all of a job's images as one zip, behind the same password.

The id is a 256-bit random token, so knowing it is the capability; the password (if the job set
one) comes as `X-Download-Password` or a `download_password` cookie, each a comma-separated list
of passwords to try. Missing: 401; wrong: 403; more than 10 failures within 15 minutes: 429,
even for the right password.

The zip is made on its first request and kept as a file of its own (kind `zip`), so it has an
id, an ETag, an expiry (the earliest of its images') and a failure counter like any image; the
answer's Content-Location is its capability URL, shareable like an image's.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import secrets
import zipfile
from typing import Any
from uuid import UUID

from litestar import Request, Response, get
from litestar.di import NamedDependency
from litestar.params import FromPath

from gateway.auth.keys import Principal
from gateway.errors import Conflict, Gone, NotFound, PermissionDenied, RateLimited, Unauthenticated
from gateway.state import Services
from gateway.storage.base import BlobNotFound
from gateway.storage.passwords import verify_any

MAX_FAILURES = 10
WINDOW_S = 15 * 60

_FILE = """
SELECT f.id, f.blob_key, f.content_type, f.size, f.etag, f.filename, f.expires_at < now() AS expired,
       f.failed_attempts, f.failures_since, j.download_password_hash,
       CASE WHEN f.failures_since > now() - make_interval(secs => $2) THEN f.failed_attempts ELSE 0 END AS recent,
       extract(epoch FROM (f.failures_since + make_interval(secs => $2) - now()))::int AS lock_left
FROM files f JOIN jobs j ON j.id = f.job_id WHERE f.id = $1
"""

_FAIL = """
UPDATE files SET
    failed_attempts = CASE WHEN failures_since > now() - make_interval(secs => $2) THEN failed_attempts + 1 ELSE 1 END,
    failures_since = CASE WHEN failures_since > now() - make_interval(secs => $2) THEN failures_since ELSE now() END
WHERE id = $1
"""


_JOB_IMAGES = """
SELECT f.id, f.blob_key, f.filename, f.expires_at
FROM files f JOIN job_results r ON r.file_id = f.id
WHERE f.job_id = $1 AND f.kind = 'image' ORDER BY r.index
"""

_ZIP_OF = "SELECT id FROM files WHERE job_id = $1 AND kind = 'zip'"

_INSERT_ZIP = """
INSERT INTO files (id, tenant_id, job_id, kind, blob_key, content_type, size, etag, filename, expires_at)
SELECT $1, tenant_id, id, 'zip', $3, 'application/zip', $4, $5, $6, $7 FROM jobs WHERE id = $2
"""


def _passwords(request: Request[Any, Any, Any]) -> list[str] | None:
    raw = request.headers.get("x-download-password") or request.cookies.get("download_password")
    if raw is None:
        return None
    parts = [p for p in raw.split(",") if p]
    # A password may itself contain commas (any printable ASCII is allowed): try the whole value too.
    return [raw, *parts] if len(parts) > 1 else parts


def _media_type(request: Request[Any, Any, Any], stored: str) -> str:
    """The file's own type, or `application/octet-stream` for a client that asks for that and not
    for the file's type (generic clients, e.g. ones generated from the OpenAPI document)."""
    accept = request.headers.get("accept", "")
    return "application/octet-stream" if "application/octet-stream" in accept and stored not in accept else stored


async def _serve(
    services: Services, request: Request[Any, Any, Any], file_id: str, headers: dict[str, str] | None = None
) -> Response[bytes]:
    """One stored file under the download-password rules: expiry, lockout, password, ETag."""
    async with services.pool.acquire() as conn:
        row = await conn.fetchrow(_FILE, file_id, WINDOW_S)
    if row is None:
        raise NotFound("No such file.")
    if row["expired"]:
        raise Gone("This file has expired.")
    stored = row["download_password_hash"]
    if stored is not None:
        if row["recent"] >= MAX_FAILURES:
            wait = max(1, row["lock_left"] or 1)
            raise RateLimited(
                "Too many wrong passwords for this file; try again later.", headers={"Retry-After": str(wait)}
            )
        candidates = _passwords(request)
        if not candidates:
            raise Unauthenticated(
                "This file is protected: send X-Download-Password or a download_password cookie.",
                headers={"WWW-Authenticate": 'Password realm="download"'},
            )
        if not await verify_any(stored, candidates):
            async with services.pool.acquire() as conn:
                await conn.execute(_FAIL, file_id, WINDOW_S)
            raise PermissionDenied("Wrong download password.")
    etag = f'"{row["etag"]}"'
    if request.headers.get("if-none-match") == etag:
        return Response(b"", status_code=304, headers={"ETag": etag, **(headers or {})})
    try:
        data = await services.blobs.get(row["blob_key"])
    except BlobNotFound as exc:
        raise Gone("This file is no longer stored.") from exc
    return Response(
        data,
        media_type=_media_type(request, row["content_type"]),
        headers={
            "ETag": etag,
            "Content-Disposition": f'attachment; filename="{row["filename"]}"',
            "Cache-Control": "private, no-store" if stored else "private, max-age=3600",
            **(headers or {}),
        },
    )


@get(
    "/v1/files/{file_id:str}",
    operation_id="downloadFile",
    opt={
        "problems": {
            401: "The file is protected and no password was sent (`WWW-Authenticate: Password`).",
            403: "Wrong download password.",
            404: "No such file.",
            410: "The file has expired, or is no longer stored.",
            429: "Too many wrong passwords for this file: retry after `Retry-After` seconds.",
        }
    },
    summary="Download a file",
    tags=["files"],
    exclude_from_auth=True,
    media_type="application/octet-stream",
)
async def download(
    services: NamedDependency[Services], request: Request[Any, Any, Any], file_id: FromPath[str]
) -> Response[bytes]:
    """Download one output image (or a job's zip)."""
    return await _serve(services, request, file_id)


def _zip(members: list[tuple[str, bytes]]) -> bytes:
    """A zip of already-compressed images: stored, not deflated, with fixed timestamps so the
    same images always give the same bytes (and the same ETag)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in members:
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return buffer.getvalue()


async def _zip_file_id(services: Services, job_id: UUID) -> str:
    """The id of the job's zip file, making it on first use."""
    async with services.pool.acquire() as conn:
        existing = await conn.fetchval(_ZIP_OF, job_id)
        if existing is not None:
            return str(existing)
        images = await conn.fetch(_JOB_IMAGES, job_id)
    if not images:
        raise Conflict("This job has no images to download.")
    members = []
    for image in images:
        try:
            members.append((str(image["filename"]), await services.blobs.get(image["blob_key"])))
        except BlobNotFound as exc:
            raise Gone("The images of this job are no longer stored.") from exc
    data = await asyncio.to_thread(_zip, members)
    blob_key = f"outputs/{job_id}/images.zip"
    await services.blobs.put(blob_key, data, "application/zip")
    async with services.pool.acquire() as conn, conn.transaction():
        # The job row lock makes concurrent first requests agree on one zip file.
        await conn.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", job_id)
        existing = await conn.fetchval(_ZIP_OF, job_id)
        if existing is not None:
            return str(existing)
        file_id = secrets.token_urlsafe(32)
        await conn.execute(
            _INSERT_ZIP,
            file_id,
            job_id,
            blob_key,
            len(data),
            hashlib.sha256(data).hexdigest()[:32],
            f"{job_id}.zip",
            min(image["expires_at"] for image in images),
        )
    return file_id


@get(
    "/v1/jobs/{job_id:uuid}/files.zip",
    operation_id="downloadJobZip",
    summary="Download a job's images as a zip",
    tags=["files"],
    opt={
        "scope": "files:read",
        "problems": {
            401: "No valid key, or the job is protected and no password was sent.",
            403: "The key lacks `files:read`, or the download password is wrong.",
            404: "No such job.",
            409: "The job is still running, or it has no images.",
            410: "The job's images have expired, or are no longer stored.",
            429: "The key's rate limit is spent, or too many wrong passwords: retry after `Retry-After` seconds.",
        },
    },
    media_type="application/zip",
)
async def download_zip(
    services: NamedDependency[Services],
    principal: NamedDependency[Principal],
    request: Request[Any, Any, Any],
    job_id: FromPath[UUID],
) -> Response[bytes]:
    """All of a finished job's images as one zip, under the job's download password.

    `Content-Location` names the zip's own file URL, which works without the API key."""
    async with services.pool.acquire() as conn:
        state = await conn.fetchval(
            "SELECT state FROM jobs WHERE id = $1 AND tenant_id = $2", job_id, principal.tenant_id
        )
    if state is None:
        raise NotFound("No such job.")
    if state in ("queued", "running"):
        raise Conflict("The job is still running; its zip is made once it has finished.")
    file_id = await _zip_file_id(services, job_id)
    return await _serve(services, request, file_id, headers={"Content-Location": f"/v1/files/{file_id}"})


routes = [download, download_zip]
