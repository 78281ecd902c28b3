"""A fake api2convert: jobs that complete after a few polls, outputs behind download passwords."""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar

from litestar import Litestar, Request, Response, delete, get, post

from tests.fakes.base import FakeVendor
from tests.fakes.images import png


@dataclass
class FakeJob:
    """A job as the fake keeps it."""

    id: str
    conversions: list[dict[str, Any]]
    polls: int = 0
    status: str = "queued"
    output: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    spent: int = 0

    def document(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "token": "job-token",
            "type": "job",
            "status": {"code": self.status, "info": f"The job is {self.status}."},
            "errors": self.errors,
            "warnings": self.warnings,
            "process": True,
            "fail_on_input_error": True,
            "fail_on_conversion_error": False,
            "notify_status": False,
            "conversion": self.conversions,
            "output": self.output,
            "server": "https://www2.api2convert.com/v2/dl/web7",
            "spent": self.spent,
        }


@dataclass
class FakeApi2Convert(FakeVendor):
    """The fake; `jobs` holds every job created since the last reset."""

    vendor: str = "api2convert"
    jobs: dict[str, FakeJob] = field(default_factory=dict)

    READINGS: ClassVar[tuple[str, ...]] = (
        "canonical_headers",  # only the SDK's X-Api2convert-* header names, not the pages' X-Oc-* ones
        "outputs_without_source",  # output[] entries that do not say which conversion made them
    )

    def reset_state(self) -> None:
        self.jobs.clear()

    def error_body(self, status: int) -> Any:
        return {"code": 99, "message": f"HTTP {status}", "errors": {}}

    def _authorized(self, request: Request[Any, Any, Any]) -> bool:
        header = "x-api2convert-api-key" if "canonical_headers" in self.readings else "x-oc-api-key"
        return request.headers.get(header) == self.api_key

    def _finish(self, job: FakeJob) -> None:
        if self.faults.fail_job:
            job.status = "failed"
            job.errors = [{"source": "conversion", "id_source": job.conversions[0]["id"], "code": 99, "message": "x"}]
            return
        count = len(job.conversions) if self.faults.outputs is None else min(self.faults.outputs, len(job.conversions))
        unsourced = "outputs_without_source" in self.readings
        for index, conversion in enumerate(job.conversions):
            if index >= count:
                job.warnings.append({"source": "conversion", "id_source": conversion["id"], "code": 51, "message": "x"})
                continue
            job.output.append(
                {
                    "id": str(uuid.uuid4()),
                    **({} if unsourced else {"source": {"conversion": conversion["id"], "input": []}}),
                    "uri": f"{self.base_url}/dl/{job.id}/{index}",
                    "status": "enabled",
                    "content_type": "image/png",
                }
            )
        job.spent = count
        # "If the job does not produce any output it will fail."
        job.status = "completed" if count else "failed"

    def _check_inputs(self, body: dict[str, Any]) -> None:
        # The gateway's (unverified) convention: inpaint sends the image, then the mask;
        # text-to-image sends no input at all.
        wanted = 2 if any(c.get("target") == "image-inpaint" for c in body["conversion"]) else 0
        if len(body.get("input", [])) != wanted:
            self.violation(f"input: expected {wanted} entries (image, mask) for these targets")
        for entry in body.get("input", []):
            if entry.get("type") == "base64":
                try:
                    base64.b64decode(entry["source"], validate=True)
                except (binascii.Error, ValueError):
                    self.violation("input: base64 source does not decode")

    def app(self) -> Litestar:
        fake = self

        @post("/v2/jobs", status_code=201)
        async def create_job(request: Request[Any, Any, Any]) -> Response[Any]:
            body = await request.json()
            fake.record(request, body)
            if not fake._authorized(request):
                return Response({"message": "Invalid api key"}, status_code=401)
            if (fault := await fake.intercept("submit")) is not None:
                return fault
            if problems := fake.check("post", "/v2/jobs", "application/json", body):
                return Response({"code": 10, "message": "; ".join(problems), "errors": {}}, status_code=400)
            fake._check_inputs(body)
            conversions = [{**c, "id": str(uuid.uuid4())} for c in body["conversion"]]
            job = FakeJob(id=str(uuid.uuid4()), conversions=conversions)
            fake.jobs[job.id] = job
            return Response(job.document(), status_code=201)

        @get("/v2/jobs/{job_id:str}")
        async def get_job(request: Request[Any, Any, Any]) -> Response[Any]:
            job_id = request.path_params["job_id"]
            fake.record(request)
            if not fake._authorized(request):
                return Response({"message": "Invalid api key"}, status_code=401)
            if (fault := await fake.intercept("poll")) is not None:
                return fault
            job = fake.jobs.get(job_id)
            if job is None:
                return Response({"code": 404, "message": "Job not found"}, status_code=404)
            job.polls += 1
            if job.status not in ("completed", "failed", "canceled"):
                job.status = "processing"
                if job.polls >= fake.faults.polls_before_done:
                    fake._finish(job)
            return Response(job.document())

        @delete("/v2/jobs/{job_id:str}", status_code=204)
        async def cancel_job(request: Request[Any, Any, Any]) -> None:
            job_id = request.path_params["job_id"]
            fake.record(request)
            job = fake.jobs.get(job_id)
            if job is not None and job.status not in ("completed", "failed"):
                job.status = "canceled"

        @get("/dl/{job_id:str}/{index:int}")
        async def download(request: Request[Any, Any, Any]) -> Response[Any]:
            job_id, index = request.path_params["job_id"], request.path_params["index"]
            fake.record(request)
            if request.headers.get("x-oc-api-key") or request.headers.get("x-api2convert-api-key"):
                fake.violation("download: the account key was sent to the download host")
            if (fault := await fake.intercept("download")) is not None:
                return fault
            job = fake.jobs[job_id]
            options = job.conversions[index].get("options", {})
            password = options.get("download_password")
            header = (
                "x-api2convert-download-password" if "canonical_headers" in fake.readings else "x-oc-download-password"
            )
            sent = request.headers.get(header, "")
            if password is not None and password not in sent.split(","):
                return Response({"message": "Password required"}, status_code=401)
            return Response(png(int(options.get("width", 64)), int(options.get("height", 64))), media_type="image/png")

        return Litestar([create_job, get_job, cancel_job, download], debug=False)
