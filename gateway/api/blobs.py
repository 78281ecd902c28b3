"""GET /v1/blobs/{key}: a job's input image, for the vendor fetching it, at a signed URL.

Only the gateway hands these URLs out (to engines whose vendor fetches inputs by URL, when the
blob store cannot presign its own; see gateway/storage/links.py). The signature is the
capability: no API key. The URL stops working at its expiry (the job's deadline) and as soon as
the job has finished, whichever comes first.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from litestar import Response, get
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery

from gateway.db.jobs import get_job_of_any_tenant
from gateway.errors import Gone, NotFound, PermissionDenied
from gateway.state import Services
from gateway.storage.base import BlobNotFound
from gateway.storage.links import ROUTE

_ACTIVE = frozenset({"queued", "running"})


@get(f"{ROUTE}/{{key:path}}", exclude_from_auth=True, include_in_schema=False, media_type="application/octet-stream")
async def input_blob(
    services: NamedDependency[Services], key: FromPath[str], expires: FromQuery[int], signature: FromQuery[str]
) -> Response[Any]:
    """The blob's bytes (200), 403 for a wrong or expired signature, 410 once its job has finished."""
    links = services.blob_links
    blob_key = key.lstrip("/")
    if links is None:
        raise NotFound("this gateway does not serve blobs by URL (public_base_url is not set)")
    if not links.valid(blob_key, expires, signature):
        raise PermissionDenied("the signature is wrong or has expired")
    # Keys are inputs/<job id>/<role> (gateway/api/images.py); the signature vouches for the form.
    job_id = UUID(blob_key.split("/")[1])
    async with services.pool.acquire() as conn:
        job = await get_job_of_any_tenant(conn, job_id)
    if job is None or job["state"] not in _ACTIVE:
        raise Gone("the job this input belongs to has finished")
    try:
        data = await services.blobs.get(blob_key)
    except BlobNotFound as exc:
        raise NotFound("no such blob") from exc
    media_type = _media_type(data)
    return Response(data, media_type=media_type, headers={"Cache-Control": "no-store"})


def _media_type(data: bytes) -> str:
    # Inputs were checked on the way in to be PNG, JPEG or WebP; the magic bytes say which.
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


routes = [input_blob]
