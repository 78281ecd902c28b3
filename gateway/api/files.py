"""GET /v1/files/{id}: the image, behind an optional download password.

The id is a 256-bit random token, so knowing it is the capability; the password (if the job set
one) comes as `X-Download-Password` or a `download_password` cookie, each a comma-separated list
of passwords to try. Missing: 401; wrong: 403; more than 10 failures within 15 minutes: 429,
even for the right password.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.di import NamedDependency
from litestar.params import FromPath

from gateway.errors import Gone, NotFound, PermissionDenied, RateLimited, Unauthenticated
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


def _passwords(request: Request[Any, Any, Any]) -> list[str] | None:
    raw = request.headers.get("x-download-password") or request.cookies.get("download_password")
    if raw is None:
        return None
    return [p for p in raw.split(",") if p]


@get("/v1/files/{file_id:str}", tags=["files"], exclude_from_auth=True, media_type="application/octet-stream")
async def download(
    services: NamedDependency[Services], request: Request[Any, Any, Any], file_id: FromPath[str]
) -> Response[bytes]:
    """Download one output image."""
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
        return Response(b"", status_code=304, headers={"ETag": etag})
    try:
        data = await services.blobs.get(row["blob_key"])
    except BlobNotFound as exc:
        raise Gone("This file is no longer stored.") from exc
    return Response(
        data,
        media_type=row["content_type"],
        headers={
            "ETag": etag,
            "Content-Disposition": f'attachment; filename="{row["filename"]}"',
            "Cache-Control": "private, no-store" if stored else "private, max-age=3600",
        },
    )


routes = [download]
