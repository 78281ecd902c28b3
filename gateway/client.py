"""`gateway generate`: a small client of a running gateway's public API.

It submits the job asynchronously (`Prefer: respond-async`), polls `GET /v1/jobs/{id}` and draws
a text progress bar on stderr, then downloads the images. It talks HTTP like any tenant would;
nothing here touches the database or the engines.
"""

from __future__ import annotations

import mimetypes
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

TERMINAL = ("succeeded", "failed", "canceled")
BAR_WIDTH = 30


class ClientError(Exception):
    """The gateway refused or failed the request; the message says why."""


@dataclass(frozen=True)
class GenerateOptions:
    prompt: str
    out: Path
    operation: str = "text-to-image"
    image: Path | None = None
    mask: Path | None = None
    fields: dict[str, Any] = field(default_factory=dict)  # n, width, height, seed, steps, ...
    download_password: str | None = None
    poll_interval_s: float = 0.25
    timeout_s: float = 600.0


def progress_bar(state: str, fraction: float) -> str:
    """`[#########.....................]  30% running`"""
    filled = round(max(0.0, min(1.0, fraction)) * BAR_WIDTH)
    return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {round(fraction * 100):3d}% {state}"


def _problem(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    detail = body.get("detail") or body.get("title") if isinstance(body, dict) else None
    return f"HTTP {response.status_code}: {detail or response.text[:200]}"


def _submit(http: httpx.Client, options: GenerateOptions) -> dict[str, Any]:
    fields: dict[str, Any] = {"prompt": options.prompt, **options.fields}
    if options.download_password:
        fields["download_password"] = options.download_password
    # A fresh key per invocation: if the connection drops after the gateway accepted the job,
    # sending it again would replay the same job instead of paying for a second one.
    headers = {"Prefer": "respond-async", "Idempotency-Key": f"cli-{uuid.uuid4()}"}
    files = {
        role: (path.name, path.read_bytes(), mimetypes.guess_type(path.name)[0] or "application/octet-stream")
        for role, path in (("image", options.image), ("mask", options.mask))
        if path is not None
    }
    if files:
        form = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in fields.items()}
        response = http.post(f"/v1/{options.operation}", data=form, files=files, headers=headers)
    else:
        response = http.post(f"/v1/{options.operation}", json=fields, headers=headers)
    if response.status_code not in (200, 202):
        raise ClientError(f"the gateway refused the job: {_problem(response)}")
    job: dict[str, Any] = response.json()
    return job


def _wait(http: httpx.Client, job: dict[str, Any], options: GenerateOptions, err: TextIO) -> dict[str, Any]:
    deadline = time.monotonic() + options.timeout_s
    shown = ""
    while True:
        line = progress_bar(job["state"], 1.0 if job["state"] == "succeeded" else float(job["progress"]))
        if line != shown:
            err.write(f"\r{line}")
            err.flush()
            shown = line
        if job["state"] in TERMINAL:
            err.write("\n")
            return job
        if time.monotonic() > deadline:
            err.write("\n")
            raise ClientError(f"job {job['id']} did not finish within {options.timeout_s:g} s; it is still running")
        time.sleep(options.poll_interval_s)
        response = http.get(f"/v1/jobs/{job['id']}")
        if response.status_code != 200:
            raise ClientError(f"polling job {job['id']} failed: {_problem(response)}")
        job = response.json()


def _targets(out: Path, count: int) -> list[Path]:
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(count)]


def _download(http: httpx.Client, job: dict[str, Any], options: GenerateOptions) -> list[Path]:
    results = [r for r in job["results"] if r.get("url")]
    headers = {"X-Download-Password": options.download_password} if options.download_password else {}
    written = []
    for result, target in zip(results, _targets(options.out, len(results)), strict=True):
        response = http.get(result["url"], headers=headers)
        if response.status_code != 200:
            raise ClientError(f"downloading image {result['index']} failed: {_problem(response)}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(response.content)
        written.append(target)
    return written


def generate(base_url: str, api_key: str, options: GenerateOptions, err: TextIO = sys.stderr) -> list[Path]:
    """Run one job to the end and save its images; returns the files written."""
    with httpx.Client(
        base_url=base_url.rstrip("/"), headers={"Authorization": f"Bearer {api_key}"}, timeout=60
    ) as http:
        try:
            job = _wait(http, _submit(http, options), options, err)
            if job["state"] != "succeeded":
                detail = (job.get("error") or {}).get("detail") or job["state"]
                raise ClientError(f"job {job['id']} {job['state']}: {detail}")
            written = _download(http, job, options)
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach the gateway at {base_url}: {type(exc).__name__}: {exc}") from exc
    err.write(f"job {job['id']}: {len(written)} image(s), charged {job['charged']} credits\n")
    return written
