"""api2convert's job document as the gateway reads it, and what a finished job or an HTTP error means.

Split from gateway/engines/api2convert.py (the request translation and the exchange) so each stays
readable; the adapter imports what it uses from here.
"""

from __future__ import annotations

import httpx
import msgspec

from gateway.engines.base import EngineError, EngineUnavailable
from gateway.engines.http import error_for_status

KIND = "api2convert"
TERMINAL = frozenset({"completed", "failed", "canceled"})
STATUS_PROGRESS = {"downloading": 0.1, "pending": 0.1, "queued": 0.15, "processing": 0.5, "completed": 0.9}


class JobStatus(msgspec.Struct, frozen=True):
    """`status` of a job."""

    code: str
    info: str = ""


class JobError(msgspec.Struct, frozen=True):
    """An entry of `errors[]` / `warnings[]`; react to `code`, never to `message`."""

    code: int | None = None
    source: str | None = None
    id_source: str | None = None
    message: str = ""


class Conversion(msgspec.Struct, frozen=True):
    """A conversion of a job, as the API echoes it back (with its id)."""

    target: str
    id: str | None = None


class OutputSource(msgspec.Struct, frozen=True):
    """Which conversion produced an output."""

    conversion: str | None = None


class OutputFile(msgspec.Struct, frozen=True):
    """An entry of `output[]`."""

    uri: str
    id: str | None = None
    status: str = "enabled"
    source: OutputSource | None = None


class Job(msgspec.Struct, frozen=True):
    """The job document returned by POST /v2/jobs and GET /v2/jobs/{id} (the fields we read)."""

    id: str
    status: JobStatus
    errors: list[JobError] = []
    warnings: list[JobError] = []
    conversion: list[Conversion] = []
    output: list[OutputFile] = []
    spent: float = 0


class ErrorBody(msgspec.Struct, frozen=True):
    """The HTTP-level error envelope `{code, message, errors}`."""

    code: int | None = None
    message: str = ""


def job_failure(job: Job) -> EngineError:
    """The error for a job that ended `failed` or `canceled`, naming its documented error codes."""
    codes = ", ".join(f"{e.source or 'job'} code {e.code}" for e in job.errors if e.code is not None)
    detail = f" ({codes})" if codes else ""
    # The documented job-level codes (17, 99, 401, 404 on inputs) are all about fetching or
    # converting on the vendor's side, so another engine may well serve the same request.
    return EngineUnavailable(f"{KIND}: job {job.status.code}{detail}", spend_vendor_credits=float(job.spent))


def job_outputs(job: Job, n: int) -> tuple[dict[int, str], dict[int, str]]:
    """Map a completed job to (index -> output uri, index -> failure reason) for n images.

    Outputs are matched to conversions by `source.conversion`; when the API does not say, they
    are taken in order. Only outputs with status `enabled` can be downloaded.
    """
    conversion_index = {c.id: i for i, c in enumerate(job.conversion) if c.id is not None}
    uris: dict[int, str] = {}
    unmatched: list[str] = []
    for output in job.output:
        if output.status != "enabled":
            continue
        conversion = output.source.conversion if output.source else None
        index = conversion_index.get(conversion) if conversion is not None else None
        if index is not None and index < n:
            uris.setdefault(index, output.uri)
        else:
            unmatched.append(output.uri)
    free = (i for i in range(n) if i not in uris)
    for uri, index in zip(unmatched, free, strict=False):
        uris[index] = uri
    reasons = {e.id_source: e.code for e in [*job.errors, *job.warnings] if e.id_source is not None}
    failed: dict[int, str] = {}
    for i in range(n):
        if i not in uris:
            conversion_id = job.conversion[i].id if i < len(job.conversion) else None
            code = reasons.get(conversion_id) if conversion_id is not None else None
            failed[i] = f"no output (code {code})" if code is not None else "no output"
    return uris, failed


def http_failure(response: httpx.Response, what: str) -> EngineError:
    """The error for a non-2xx answer, naming the documented error `code` when the body has one."""
    try:
        code = msgspec.json.decode(response.content, type=ErrorBody).code
    except msgspec.DecodeError:
        code = None  # error bodies are informative only; the status decides
    detail = f"code {code}" if code is not None else ""
    return error_for_status(response.status_code, what, retry_after=response.headers.get("retry-after"), detail=detail)
