"""What is particular to one operation of the document: bodies Litestar cannot type (binary files,
the event stream, CSV), the 202 of an async generation, links between operations, examples."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.domain.generation import IMAGE_MEDIA_TYPES
from gateway.openapi.headers import header

TAGS: list[dict[str, str]] = [
    {"name": "images", "description": "Generate images: text-to-image, image-to-image and inpainting."},
    {"name": "jobs", "description": "A generation's job: its state, results, engine attempts and events."},
    {"name": "files", "description": "Download generated images, behind the job's optional download password."},
    {"name": "billing", "description": "The tenant's credits: balance, ledger and usage."},
    {"name": "keys", "description": "The tenant's own API keys."},
    {"name": "webhooks", "description": "Where and how job events are delivered."},
    {"name": "openai", "description": "OpenAI-compatible image endpoints, for the official OpenAI SDKs."},
    {"name": "admin-tenants", "description": "Operators: tenants, their keys and credits."},
    {"name": "admin-keys", "description": "Operators: operator keys."},
    {"name": "admin-prices", "description": "Operators: the price book and its versions."},
    {"name": "admin-usage", "description": "Operators: usage and margin across tenants."},
    {"name": "admin-engines", "description": "Operators: engine health, breakers and capacity."},
    {"name": "operations", "description": "Liveness, readiness and metrics for the people who run the gateway."},
]

_REF = "#/components/schemas/{}"
_JOB = {"application/json": {"schema": {"$ref": _REF.format("JobView")}}}
_BINARY = {"type": "string", "format": "binary"}


def _job_links() -> dict[str, Any]:
    """From an answer carrying a Job to what can be done with that job next."""
    job_id = {"job_id": "$response.body#/id"}
    return {
        "getJob": {"operationId": "getJob", "parameters": job_id, "description": "The job's state and results."},
        "cancelJob": {"operationId": "cancelJob", "parameters": job_id, "description": "Cancel the job."},
        "streamJobEvents": {
            "operationId": "streamJobEvents",
            "parameters": job_id,
            "description": "The job's events until it finishes.",
        },
        "downloadJobZip": {
            "operationId": "downloadJobZip",
            "parameters": job_id,
            "description": "All of the job's images as one zip.",
        },
        "downloadFirstFile": {
            "operationId": "downloadFile",
            "parameters": {"file_id": "$response.body#/results/0/file_id"},
            "description": "The job's first image.",
        },
    }


_EXAMPLES: dict[str, dict[str, Any]] = {
    "createTextToImage": {
        "prompt": "a lighthouse on a cliff at dusk, oil painting",
        "negative_prompt": "blurry",
        "width": 512,
        "height": 512,
        "steps": 30,
        "n": 2,
        "seed": 42,
        "output_format": "png",
        "download_password": "correct horse battery staple",
    },
    "createImageToImage": {
        "prompt": "the same scene in winter",
        "image": "https://example.com/input.png",
        "strength": 0.6,
    },
    "createInpaint": {
        "prompt": "a red door",
        "image": "https://example.com/house.png",
        "mask": "https://example.com/door-mask.png",
    },
    "createKey": {"name": "ci-runner", "scopes": ["generate", "jobs:read", "files:read"], "rate_limit_per_minute": 60},
    "createTenantKey": {"name": "backend", "scopes": ["generate", "jobs:read", "files:read"]},
    "rotateKey": {"grace_period_s": 3600},
    "setWebhook": {"url": "https://example.com/hooks/images"},
    "createTenant": {"name": "Acme Images", "credits": 100, "max_concurrent_jobs": 8},
    "changeTenantCredits": {"amount": 50, "kind": "topup", "reason": "invoice 2026-118"},
    "setLowBalanceThreshold": {"threshold": 10},
    "createOperatorKey": {"name": "billing-ops"},
    "publishPrices": {
        "note": "winter prices",
        "rules": [
            {"operation": "text-to-image", "base": 1.0, "cap": 4.0},
            {"operation": "image-to-image", "base": 1.2, "cap": 4.0},
            {"operation": "inpaint", "base": 1.2, "cap": 4.0},
        ],
    },
    "openaiCreateImage": {"prompt": "a lighthouse", "n": 1, "size": "512x512", "response_format": "url"},
}


_JOB_ID = "0b7e5f0e-4c1d-4a39-9a63-2f4c3f0d9a11"
_JOB_EXAMPLE = {
    "id": _JOB_ID,
    "object": "job",
    "operation": "text-to-image",
    "state": "succeeded",
    "progress": 1.0,
    "n": 2,
    "images_succeeded": 2,
    "unit_price": 1.0,
    "charged": 2.0,
    "engine": "a2c",
    "download_protected": True,
    "results": [
        {"index": 0, "status": "succeeded", "file_id": "f1Yl3Xv0", "url": "/v1/files/f1Yl3Xv0", "seed": 42},
        {"index": 1, "status": "succeeded", "file_id": "Q9sK2m1a", "url": "/v1/files/Q9sK2m1a", "seed": 43},
    ],
    "zip_url": f"/v1/jobs/{_JOB_ID}/files.zip",
    "attempts": [{"engine": "a2c", "outcome": "succeeded", "latency_ms": 3120, "images": 2}],
    "error": None,
    "created_at": "2026-12-04T09:30:00Z",
    "started_at": "2026-12-04T09:30:00Z",
    "finished_at": "2026-12-04T09:30:03Z",
}
_PROBLEM_EXAMPLES = {
    "402": {
        "type": "https://gateway.invalid/problems/insufficient-credits",
        "title": "Insufficient credits",
        "status": 402,
        "detail": "This request costs 2.0 credits; 0.5 are available.",
        "instance": "/v1/text-to-image",
        "balance": 0.5,
        "available": 0.5,
        "price": 2.0,
        "shortfall": 1.5,
    },
    "422": {
        "type": "https://gateway.invalid/problems/validation-error",
        "title": "The request is invalid",
        "status": 422,
        "detail": "n: Expected `int` <= 8",
        "instance": "/v1/text-to-image",
        "errors": [{"field": "n", "message": "Expected `int` <= 8"}],
    },
}


def _generation(operation: dict[str, Any]) -> None:
    responses = operation["responses"]
    for status, example in _PROBLEM_EXAMPLES.items():
        responses[status]["content"]["application/problem+json"]["example"] = example
    ok = responses["200"]
    ok["content"]["application/json"]["example"] = _JOB_EXAMPLE
    ok["description"] = "The job finished and made its images (see `results`); charged per image made."
    ok.setdefault("headers", {}).update(
        Location=header("Location"), **{"Idempotent-Replayed": header("Idempotent-Replayed")}
    )
    ok["links"] = _job_links()
    running = {**_JOB_EXAMPLE, "state": "running", "progress": 0.4, "images_succeeded": 0, "charged": 0.0}
    running.update(results=[], zip_url=None, attempts=[], finished_at=None)
    responses["202"] = {
        "description": 'Accepted: the job runs on (`Prefer: respond-async`, `"async": true`, or a sync job '
        "that outlived the wait). Poll `Location` or stream its events.",
        "content": {"application/json": {**_JOB["application/json"], "example": running}},
        "headers": {**ok["headers"], "Location": header("Location", required=True)},
        "links": _job_links(),
    }


def _download(operation: dict[str, Any], *, zip_only: bool) -> None:
    operation.setdefault("parameters", []).extend(
        [
            {
                "name": "X-Download-Password",
                "in": "header",
                "required": False,
                # The `download_password` cookie, for browsers, takes the same value. It is said here,
                # not declared: clients generated with per-request cookies warn on every call.
                "description": "The job's download password; a comma-separated list tries each. A browser "
                "may send it as a `download_password` cookie instead.",
                "schema": {"type": "string"},
            },
            {
                "name": "If-None-Match",
                "in": "header",
                "required": False,
                "description": "The `ETag` of a copy the client has: 304 if unchanged.",
                "schema": {"type": "string"},
            },
        ]
    )
    # application/octet-stream: what the server answers to `Accept: application/octet-stream`, and
    # the one binary type client generators map to bytes.
    media = ("application/zip",) if zip_only else (*IMAGE_MEDIA_TYPES, "application/zip")
    media = (*media, "application/octet-stream")
    headers = {name: header(name, required=True) for name in ("ETag", "Content-Disposition", "Cache-Control")}
    if zip_only:
        headers["Content-Location"] = header("Content-Location", required=True)
    ok = operation["responses"]["200"]
    ok["content"] = {m: {"schema": _BINARY} for m in media}
    ok["description"] = "The file's bytes, as its own type (or `application/octet-stream` when asked for)."
    ok.setdefault("headers", {}).update(headers)
    operation["responses"]["304"] = {
        "description": "Not modified: `If-None-Match` named the current `ETag`.",
        "headers": {
            **{k: v for k, v in ok["headers"].items() if k.startswith("RateLimit")},
            "ETag": header("ETag", required=True),
            **({"Content-Location": header("Content-Location", required=True)} if zip_only else {}),
        },
    }


def _event(name: str, schema: str) -> dict[str, Any]:
    return {
        "required": ["event"],
        "properties": {
            "event": {"const": name},
            "data": {"contentMediaType": "application/json", "contentSchema": {"$ref": _REF.format(schema)}},
        },
    }


def _events(operation: dict[str, Any]) -> None:
    ok = operation["responses"]["200"]
    # Before OpenAPI 3.2's `itemSchema`, the schema of an event stream describes one event, with its
    # `data` as JSON by `contentSchema` (the reading of the OpenAPI 3.2 text and of schemathesis).
    ok["content"] = {
        "text/event-stream": {
            "schema": {
                "description": "One Server-Sent Event: `status` (a JobStatus) on every change, then one `done` "
                "with the terminal Job, after which the stream closes; `: keep-alive` comments while idle.",
                "type": "object",
                "properties": {
                    "event": {"type": "string", "enum": ["status", "done"]},
                    "data": {"type": "string"},
                    "id": {"type": "string"},
                    "retry": {"type": "integer", "minimum": 0},
                },
                "required": ["event", "data"],
                "oneOf": [_event("status", "JobStatus"), _event("done", "JobView")],
            }
        }
    }
    ok.setdefault("headers", {})["Cache-Control"] = header("Cache-Control", required=True)


def _usage(operation: dict[str, Any]) -> None:
    ok = operation["responses"]["200"]
    ok["content"]["text/csv"] = {
        "schema": {"type": "string", "description": "The same rows as CSV, one header line (`Accept: text/csv`)."}
    }
    ok.setdefault("headers", {})["Content-Disposition"] = header("Content-Disposition")


def _metrics(operation: dict[str, Any]) -> None:
    operation["responses"]["200"]["content"] = {
        "text/plain": {"schema": {"type": "string", "description": "Prometheus text exposition format 0.0.4."}},
        "application/openmetrics-text": {
            "schema": {
                "type": "string",
                "description": "OpenMetrics 1.0, with trace-id exemplars on the engine latency histogram "
                "(`Accept: application/openmetrics-text`).",
            }
        },
    }


_PARTICULAR: dict[str, Callable[[dict[str, Any]], None]] = {
    "createTextToImage": _generation,
    "createImageToImage": _generation,
    "createInpaint": _generation,
    "downloadFile": lambda op: _download(op, zip_only=False),
    "downloadJobZip": lambda op: _download(op, zip_only=True),
    "streamJobEvents": _events,
    "getUsage": _usage,
    "getAdminUsage": _usage,
    "getMetrics": _metrics,
}

_CREATED_LINKS: dict[str, dict[str, Any]] = {
    "createKey": {
        "rotateKey": {"operationId": "rotateKey", "parameters": {"key_id": "$response.body#/id"}},
        "revokeKey": {"operationId": "revokeKey", "parameters": {"key_id": "$response.body#/id"}},
    },
    "createTenant": {
        "getTenant": {"operationId": "getTenant", "parameters": {"tenant_id": "$response.body#/tenant/id"}},
        "listTenantKeys": {"operationId": "listTenantKeys", "parameters": {"tenant_id": "$response.body#/tenant/id"}},
    },
    "createOperatorKey": {
        "revokeOperatorKey": {"operationId": "revokeOperatorKey", "parameters": {"key_id": "$response.body#/id"}},
    },
    "cancelJob": _job_links(),
    "getJob": _job_links(),
}


def particular(operation: dict[str, Any]) -> None:
    """Apply what is particular to this operation (by its operationId)."""
    operation_id = operation["operationId"]
    if operation_id in _PARTICULAR:
        _PARTICULAR[operation_id](operation)
    example = _EXAMPLES.get(operation_id)
    if example is not None:
        for media in operation["requestBody"]["content"].values():
            media["example"] = example
    links = _CREATED_LINKS.get(operation_id)
    if links is not None:
        success = next(r for s, r in operation["responses"].items() if s.startswith("2"))
        success["links"] = links
