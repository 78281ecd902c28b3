"""The real GPU service on the demo model, with the contract suite's fault switches.

Faults act where they would happen for real: HTTP-level ones (status, hang, malformed body) in
front of the app, job-level ones (a failing job, a partial result, a slow job) inside the
pipeline call, so the service's own error paths produce what the engine sees.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import msgspec

from gateway.gpu.pipelines import LoadedModel
from gateway.gpu.protocol import ErrorBody
from gateway.gpu.server import create_gpu_app
from gateway.gpu.service import GpuService
from tests.fakes.base import Faults, Stage
from tests.fakes.server import ServerThread
from tests.integration.gpu.conftest import gpu_config


class FaultInjectingModel(LoadedModel):
    """The demo model, failing on demand inside the pipeline call."""

    def __init__(self, base: Any, control: FaultyGpuService, first_seed: int) -> None:
        super().__init__(base, family="sd15", device="cpu")
        self.control = control
        self.first_seed = first_seed

    def call_pipeline(self, pipe: Any, kwargs: dict[str, Any]) -> Any:
        import torch

        faults = self.control.faults
        if faults.fail_job:
            raise RuntimeError("injected device fault")
        if faults.polls_before_done > 1:
            time.sleep(0.05 * faults.polls_before_done)  # a slow job is the fault asked for: this sleep stays
        if faults.outputs is not None:
            # Batches do not fit, and single images past `outputs` do not either: a partial result.
            indices = [g.initial_seed() - self.first_seed for g in kwargs["generator"]]
            if len(indices) > 1 or indices[0] >= faults.outputs:
                raise torch.OutOfMemoryError("injected")
        return super().call_pipeline(pipe, kwargs)


class FaultyGpuService:
    """FaultControl (tests/fakes/base.py) over a real GPU service served on 127.0.0.1."""

    def __init__(self, model: LoadedModel, *, first_seed: int) -> None:
        self.faults = Faults()
        self._released = threading.Event()
        faulty = FaultInjectingModel(model.pipelines["text-to-image"], self, first_seed)
        config = gpu_config(batch_window_ms=5.0)
        self.service = GpuService(config, None, model=faulty)
        self.app = create_gpu_app(config, None, service=self.service)
        self._server = ServerThread(self)
        self.base_url = ""

    def start(self) -> None:
        self.base_url = self._server.start()

    def stop(self) -> None:
        self._server.stop()

    def reset(self) -> None:
        self.faults = Faults()
        self._released.set()

    def fail_with_status(self, status: int, *, retry_after: str | None = None, on: Stage = "submit") -> None:
        self.faults.status, self.faults.retry_after, self.faults.stage = status, retry_after, on

    def hang(self, seconds: float, *, on: Stage = "submit") -> None:
        self._released.clear()
        self.faults.hang_s, self.faults.stage = seconds, on

    def malformed(self, *, on: Stage = "submit") -> None:
        self.faults.malformed, self.faults.stage = True, on

    def fail_job(self) -> None:
        self.faults.fail_job = True

    def slow_job(self, polls: int) -> None:
        self.faults.polls_before_done = polls

    def fewer_outputs(self, count: int) -> None:
        self.faults.outputs = count

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        faults = self.faults
        if scope["type"] == "http" and scope["path"] == "/v1/generate" and faults.stage == "submit":
            if faults.hang_s:
                # Waits on an event that reset() sets, so the next test ends the hang at once.
                await asyncio.to_thread(self._released.wait, faults.hang_s)
            if faults.status is not None:
                headers = [(b"content-type", b"application/json")]
                if faults.retry_after is not None:
                    headers.append((b"retry-after", faults.retry_after.encode()))
                detail = ErrorBody(kind="unavailable", detail=f"injected HTTP {faults.status}")
                await _respond(send, faults.status, headers, msgspec.json.encode(detail))
                return
            if faults.malformed:
                await _respond(send, 200, [(b"content-type", b"text/html")], b"<html>502 Bad Gateway</html>")
                return
        await self.app(scope, receive, send)


async def _respond(send: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
