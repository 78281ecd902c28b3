"""A fake Qolaba: queued (celery) tasks polled through POST /getImage, outputs as URLs."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx
from litestar import Litestar, Request, Response, get, post

from tests.fakes.base import FakeVendor
from tests.fakes.images import png

# The docs name no status values; the fake uses Celery's, which the engine must not rely on.
PENDING, DONE = "PENDING", "SUCCESS"


def envelope(**fields: Any) -> dict[str, Any]:
    """The documented envelope with every field present (empty strings by default)."""
    keys = ("time_required", "error", "error_data", "input", "output", "app_id", "task_id", "status")
    return {key: fields.get(key, "") for key in keys}


@dataclass
class FakeTask:
    """A queued task as the fake keeps it."""

    id: str
    batch: int
    width: int
    height: int
    polls: int = 0


@dataclass
class FakeQolaba(FakeVendor):
    """The fake; `tasks` holds every task queued since the last reset."""

    vendor: str = "qolaba"
    tasks: dict[str, FakeTask] = field(default_factory=dict)
    # A status string the engine has never seen; it must keep polling through it.
    odd_status: str = "IN_PROGRESS_7"
    # On, the fake fetches `image` and `mask_url` on submit as the real vendor does (off: the
    # engine contract tests send URLs nobody serves), and records (url, HTTP status, body).
    fetch_inputs: bool = False
    fetched: list[tuple[str, int, bytes]] = field(default_factory=list)

    # The task fails through `status` alone, error and error_data left empty (set to e.g. "FAILURE").
    failed_status: str | None = None

    READINGS: ClassVar[tuple[str, ...]] = (
        "one_spelling",  # image-to-image and inpainting both at /getImagetoImage; /getImageToImage is a 404
        "raw_token",  # `Authorization: <token>` (the image-to-image page), not `Bearer <token>`
        "output_string",  # `output` is one string (the envelope's documented type), not a list
        "synchronous",  # `celery` ignored: the answer carries the output at once
        "file_url_field",  # the input image URL under `file_url` (002's description), not `image`
    )

    def reset_state(self) -> None:
        self.tasks.clear()
        self.fetch_inputs = False
        self.fetched.clear()
        self.failed_status = None

    async def _fetch_inputs(self, body: dict[str, Any]) -> str | None:
        """GET each input URL; the reason the task cannot run when one does not answer 200."""
        for name in ("image", "mask_url"):
            url = body.get(name)
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                continue
            async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
                reply = await client.get(url)
            self.fetched.append((url, reply.status_code, reply.content))
            if reply.status_code != 200:
                return f"{name}: fetching it returned HTTP {reply.status_code}"
        return None

    def error_body(self, status: int) -> Any:
        return envelope(error="internal error", error_data=f"HTTP {status}", status="FAILURE")

    def _authorized(self, request: Request[Any, Any, Any]) -> bool:
        expected = self.api_key if "raw_token" in self.readings else f"Bearer {self.api_key}"
        return request.headers.get("authorization") == expected

    def _outputs(self, task: FakeTask) -> list[str] | str:
        count = task.batch if self.faults.outputs is None else min(self.faults.outputs, task.batch)
        urls = [f"{self.base_url}/files/{task.id}/{i}.png" for i in range(count)]
        if "output_string" in self.readings:
            return urls[0] if urls else ""  # one string holds one image
        return urls

    async def _generate(self, request: Request[Any, Any, Any], path: str) -> Response[Any]:
        body = await request.json()
        self.record(request, body)
        if not self._authorized(request):
            return Response(envelope(error="unauthorized"), status_code=401)
        if (fault := await self.intercept("submit")) is not None:
            return fault
        if "file_url_field" in self.readings and path != "/getTextToImage":
            if "image" in body or "file_url" not in body:
                return Response(envelope(error="invalid request", error_data="file_url is required"), status_code=422)
            body = {("image" if k == "file_url" else k): v for k, v in body.items()}  # for the schema check
        if path == "/getImagetoImage" and "one_spelling" in self.readings and "mask_url" not in body:
            path = "/getImageToImage"  # image-to-image under the one spelling: its own schema applies
        if problems := self.check("post", path, "application/json", body):
            return Response(envelope(error="invalid request", error_data="; ".join(problems)), status_code=400)
        if self.fetch_inputs and (unfetchable := await self._fetch_inputs(body)) is not None:
            return Response(envelope(error="invalid input", error_data=unfetchable), status_code=400)
        task = FakeTask(
            id=str(uuid.uuid4()),
            batch=int(body.get("batch", 1)),
            width=int(body.get("width", 512)),
            height=int(body.get("height", 512)),
        )
        self.tasks[task.id] = task
        if not body.get("celery") or "synchronous" in self.readings:
            if self.faults.fail_job:
                return Response(envelope(app_id=body["app_id"], task_id=task.id, status="FAILURE", error="failed"))
            return Response(envelope(app_id=body["app_id"], task_id=task.id, status=DONE, output=self._outputs(task)))
        return Response(envelope(app_id=body["app_id"], task_id=task.id, status=PENDING))

    def app(self) -> Litestar:
        fake = self

        @post("/getTextToImage", status_code=200)
        async def text_to_image(request: Request[Any, Any, Any]) -> Response[Any]:
            return await fake._generate(request, "/getTextToImage")

        @post("/getImageToImage", status_code=200)
        async def image_to_image(request: Request[Any, Any, Any]) -> Response[Any]:
            if "one_spelling" in fake.readings:
                fake.record(request)
                return Response({"detail": "Not Found"}, status_code=404)
            return await fake._generate(request, "/getImageToImage")

        @post("/getImagetoImage", status_code=200)
        async def inpaint(request: Request[Any, Any, Any]) -> Response[Any]:
            return await fake._generate(request, "/getImagetoImage")

        @post("/getImage", status_code=200)
        async def task_status(request: Request[Any, Any, Any]) -> Response[Any]:
            body = await request.json()
            fake.record(request, body)
            if not fake._authorized(request):
                return Response(envelope(error="unauthorized"), status_code=401)
            if (fault := await fake.intercept("poll")) is not None:
                return fault
            if problems := fake.check("post", "/getImage", "application/json", body):
                return Response(envelope(error="invalid request", error_data="; ".join(problems)), status_code=400)
            task = fake.tasks.get(body["id"])
            if task is None:
                return Response(envelope(error="task not found", task_id=body["id"]), status_code=500)
            task.polls += 1
            if task.polls < fake.faults.polls_before_done:
                status = PENDING if task.polls % 2 else fake.odd_status
                return Response(envelope(task_id=task.id, status=status))
            if fake.failed_status is not None:
                return Response(envelope(task_id=task.id, status=fake.failed_status))
            if fake.faults.fail_job:
                return Response(envelope(task_id=task.id, status="FAILURE", error="generation failed"))
            outputs = fake._outputs(task)
            if not outputs:
                return Response(envelope(task_id=task.id, status="FAILURE", error_data="no image produced"))
            return Response(envelope(task_id=task.id, status=DONE, output=outputs, time_required="0.1"))

        @get("/files/{task_id:str}/{name:str}")
        async def files(request: Request[Any, Any, Any]) -> Response[Any]:
            task_id = request.path_params["task_id"]
            fake.record(request)
            if request.headers.get("authorization") is not None:
                fake.violation("download: the API key was sent with an output download")
            if (fault := await fake.intercept("download")) is not None:
                return fault
            task = fake.tasks[task_id]
            return Response(png(task.width, task.height), media_type="image/png")

        return Litestar([text_to_image, image_to_image, inpaint, task_status, files], debug=False)
