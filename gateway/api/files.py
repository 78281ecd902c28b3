"""GET /v1/files/{id}: the image, behind an optional download password.
GET /v1/jobs/{id}/files.zip: all of a job's images as one zip, behind the same password.

The id is a 256-bit random token, so knowing it is the capability; the password (if the job set
one) comes as `X-Download-Password` or a `download_password` cookie, each a comma-separated list
of passwords to try (at most 10 are). Missing: 401; wrong: 403.

Every candidate tried costs an argon2id hash and, when wrong, counts as a failure against the
file and against its job (one password guards all of a job's files): more than 10 failures within
15 minutes on either gives 429, even for the right password. Attempts are reserved before hashing,
so concurrent requests never try more than that between them. Before any of it, the hashes a
client address and a file may cost per minute are limited too (429 with Retry-After).

The zip is made on its first request, after the password was checked, and kept as a file of its
own (kind `zip`), so it has an id, an ETag, an expiry (the earliest of its images') and a failure
counter like any image; the answer's Content-Location is its capability URL, shareable like an
image's.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import math
import secrets
import zipfile
from typing import Any
from uuid import UUID

from litestar import Request, Response, get
from litestar.di import NamedDependency
from litestar.params import FromPath

from gateway.auth.keys import Principal
from gateway.db import files as fq
from gateway.errors import Conflict, Gone, NotFound, PermissionDenied, RateLimited, Unauthenticated
from gateway.state import Services
from gateway.storage.base import BlobNotFound
from gateway.storage.passwords import MAX_CANDIDATES, first_match

MAX_FAILURES = 10
WINDOW_S = 15 * 60


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


def _client(request: Request[Any, Any, Any]) -> str:
    return request.client.host if request.client is not None else "unknown"


async def check_password(
    services: Services, request: Request[Any, Any, Any], *, stored: str, job_id: UUID, file_id: str | None
) -> None:
    """Pass when the request carries the password whose hash is `stored`; otherwise raise 401 (none
    sent), 429 (over a rate limit or locked out) or 403 (wrong). `file_id` None: the job's zip, not
    made yet, is asked for (only the job's counter applies)."""
    candidates = _passwords(request)
    if not candidates:
        raise Unauthenticated(
            "This file is protected: send X-Download-Password or a download_password cookie.",
            headers={"WWW-Authenticate": 'Password realm="download"'},
        )
    candidates = candidates[:MAX_CANDIDATES]
    wait = services.download_limits.take(_client(request), file_id or f"job:{job_id}", len(candidates))
    if wait > 0:
        raise RateLimited(
            "Too many password checks from this address or for this file; try again later.",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
            limit="download_password_checks",
        )
    async with services.pool.acquire() as conn:
        reservation = await fq.reserve_attempts(
            conn, job_id=job_id, file_id=file_id, wanted=len(candidates), limit=MAX_FAILURES, window_s=WINDOW_S
        )
    if reservation.granted == 0:
        raise RateLimited(
            "Too many wrong passwords for this file; try again later.",
            headers={"Retry-After": str(reservation.retry_after_s)},
            limit="download_password_failures",
        )
    match = await first_match(stored, candidates[: reservation.granted])
    if match is None:
        raise PermissionDenied("Wrong download password.")
    # The candidates before the match were wrong guesses; the match and any after it were not.
    async with services.pool.acquire() as conn:
        await fq.release_attempts(conn, job_id=job_id, file_id=file_id, count=reservation.granted - match)


async def _serve(
    services: Services,
    request: Request[Any, Any, Any],
    file_id: str,
    headers: dict[str, str] | None = None,
    *,
    password_checked: bool = False,
) -> Response[bytes]:
    """One stored file under the download-password rules: expiry, lockout, password, ETag."""
    async with services.pool.acquire() as conn:
        stored_file = await fq.file_for_download(conn, file_id)
    if stored_file is None:
        raise NotFound("No such file.")
    if stored_file.expired:
        raise Gone("This file has expired.")
    stored = stored_file.password_hash
    if stored is not None and not password_checked:
        await check_password(services, request, stored=stored, job_id=stored_file.job_id, file_id=file_id)
    etag = f'"{stored_file.etag}"'
    if request.headers.get("if-none-match") == etag:
        return Response(b"", status_code=304, headers={"ETag": etag, **(headers or {})})
    try:
        data = await services.blobs.get(stored_file.blob_key)
    except BlobNotFound as exc:
        raise Gone("This file is no longer stored.") from exc
    return Response(
        data,
        media_type=_media_type(request, stored_file.content_type),
        headers={
            "ETag": etag,
            "Content-Disposition": f'attachment; filename="{stored_file.filename}"',
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
            429: "Too many wrong passwords for this file's job (`limit`: `download_password_failures`), or too "
            "many password checks from this address or for this file (`download_password_checks`): retry "
            "after `Retry-After` seconds.",
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
        existing = await fq.zip_of(conn, job_id)
        if existing is not None:
            return existing
        images = await fq.job_images(conn, job_id)
    if not images:
        raise Conflict("This job has no images to download.")
    members = []
    for image in images:
        try:
            members.append((image.filename, await services.blobs.get(image.blob_key)))
        except BlobNotFound as exc:
            raise Gone("The images of this job are no longer stored.") from exc
    data = await asyncio.to_thread(_zip, members)
    blob_key = f"outputs/{job_id}/images.zip"
    await services.blobs.put(blob_key, data, "application/zip")
    async with services.pool.acquire() as conn:
        return await fq.insert_zip_once(
            conn,
            file_id=secrets.token_urlsafe(32),
            job_id=job_id,
            blob_key=blob_key,
            size=len(data),
            etag=hashlib.sha256(data).hexdigest()[:32],
            filename=f"{job_id}.zip",
            expires_at=min(image.expires_at for image in images),
        )


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
            429: "The key's rate limit is spent, too many failed authentications from this address, too many "
            "wrong passwords for the job or too many password checks: retry after `Retry-After` seconds.",
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

    `Content-Location` names the zip's own file URL, which works without the API key. The password
    is checked before the zip is made: a wrong one costs no reading or zipping of images."""
    async with services.pool.acquire() as conn:
        found = await fq.job_password(conn, job_id, principal.tenant)
        zip_id = await fq.zip_of(conn, job_id) if found is not None else None
    if found is None:
        raise NotFound("No such job.")
    state, stored = found
    if state in ("queued", "running"):
        raise Conflict("The job is still running; its zip is made once it has finished.")
    if stored is not None:
        await check_password(services, request, stored=stored, job_id=job_id, file_id=zip_id)
    file_id = await _zip_file_id(services, job_id)
    return await _serve(
        services, request, file_id, headers={"Content-Location": f"/v1/files/{file_id}"}, password_checked=True
    )


routes = [download, download_zip]
