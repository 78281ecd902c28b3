"""The response headers the document names, as Header Objects."""

from __future__ import annotations

from typing import Any

HEADERS: dict[str, dict[str, Any]] = {
    "RateLimit-Limit": {"description": "Requests per minute the key may make.", "schema": {"type": "integer"}},
    "RateLimit-Remaining": {"description": "Requests left in the current window.", "schema": {"type": "integer"}},
    "RateLimit-Reset": {
        "description": "Seconds until a request is allowed again (0 while requests remain).",
        "schema": {"type": "integer", "minimum": 0},
    },
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer", "minimum": 0}},
    "WWW-Authenticate": {"description": "The credentials the operation expects.", "schema": {"type": "string"}},
    "Location": {"description": "The job's URL: `/v1/jobs/{id}`.", "schema": {"type": "string"}},
    "X-Request-Id": {
        "description": "This request's id: the client's own `X-Request-Id` when well-formed, else one the gateway "
        "made. It is in the logs, on the job, in problem bodies (`request_id`) and in webhook deliveries.",
        "schema": {"type": "string"},
    },
    "Idempotent-Replayed": {
        "description": "`true` when this answer replays the job an earlier request with the same Idempotency-Key made.",
        "schema": {"type": "string", "enum": ["true"]},
    },
    "ETag": {"description": "The file's entity tag; send it back as `If-None-Match`.", "schema": {"type": "string"}},
    "Content-Disposition": {"description": "`attachment; filename=...`.", "schema": {"type": "string"}},
    "Content-Location": {
        "description": "The zip's own file URL (`/v1/files/{id}`), which works without the API key.",
        "schema": {"type": "string"},
    },
    "Cache-Control": {"description": "How long a client may keep the answer.", "schema": {"type": "string"}},
}


def header(name: str, *, required: bool = False) -> dict[str, Any]:
    """The Header Object for `name`: a reference, or inline where it is required (`required` may
    not stand beside a `$ref`)."""
    return {**HEADERS[name], "required": True} if required else {"$ref": f"#/components/headers/{name}"}
