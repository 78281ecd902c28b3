"""The GPU service's internal HTTP API (litestar) and the `gateway gpu-worker` entry point.

Endpoints: `POST /v1/generate` (NDJSON event stream, see protocol.py), `GET /v1/capacity`,
`GET /v1/health` (no auth: it is the probe). With a shared secret configured every other
request must carry `Authorization: Bearer <secret>`; without one the app is meant for
in-process use only (an httpx ASGI transport), and `run_gpu_worker` refuses to listen.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import msgspec
import uvicorn
from litestar import Litestar, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.exceptions import NotAuthorizedException
from litestar.handlers import BaseRouteHandler
from litestar.response import Stream

from gateway.config import GpuConfig, otel_environment
from gateway.domain.generation import EngineRequest, GeneratedImage
from gateway.gpu.demo_model import make_demo_model
from gateway.gpu.images import media_type
from gateway.gpu.protocol import (
    NDJSON,
    Accepted,
    Capacity,
    ErrorBody,
    ErrorKind,
    Failed,
    GenerateEvent,
    Health,
    Progress,
    Result,
)
from gateway.gpu.samplers import SUPPORTED_SAMPLERS
from gateway.gpu.service import GpuService, NotAccepting, OperationUnsupported, RequestInvalid
from gateway.gpu.work import BatchKey, ImageWork
from gateway.observability.logs import configure_logging
from gateway.observability.middleware import RequestContext
from gateway.observability.tracing import setup_tracing, shutdown_tracing

if TYPE_CHECKING:
    from gateway.config import Settings

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0  # well under any client read timeout, so a queued request's stream never looks dead
MAX_BODY_BYTES = 64 * 1024 * 1024  # two base64 inputs at the gateway's 20 MB input limit


def _service(connection: ASGIConnection[Any, Any, Any, Any]) -> GpuService:
    service: GpuService = connection.app.state.gpu_service
    return service


def _require_secret(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    secret = _service(connection).config.shared_secret
    if secret is None:
        return
    given = connection.headers.get("authorization", "")
    # Constant-time: the comparison must not reveal how much of a guess was right.
    if not hmac.compare_digest(given.encode(), f"Bearer {secret}".encode()):
        raise NotAuthorizedException("missing or wrong shared secret")


def _error(status: int, kind: ErrorKind, detail: str, headers: dict[str, str] | None = None) -> Response[ErrorBody]:
    return Response(ErrorBody(kind=kind, detail=detail), status_code=status, headers=headers)


@post("/v1/generate", guards=[_require_secret], status_code=200)
async def generate(request: Request[Any, Any, Any]) -> Response[ErrorBody] | Stream:
    """Validate and queue one request; stream its progress and result as NDJSON."""
    service = _service(request)
    try:
        body = msgspec.json.decode(await request.body(), type=EngineRequest)
        key, works = await service.admit(body)
    except msgspec.ValidationError as exc:
        return _error(422, "rejected", str(exc))
    except msgspec.DecodeError as exc:
        return _error(400, "rejected", f"malformed JSON: {exc}")
    except RequestInvalid as exc:
        return _error(422, "rejected", str(exc))
    except OperationUnsupported as exc:
        return _error(501, "unsupported", str(exc))
    except NotAccepting as exc:
        return _error(503, "draining" if service.draining else "unavailable", str(exc), {"Retry-After": "5"})
    return Stream(_events(service, body, key, works), media_type=NDJSON)


async def _events(
    service: GpuService, request: EngineRequest, key: BatchKey, works: list[ImageWork]
) -> AsyncIterator[bytes]:
    encoder = msgspec.json.Encoder()

    def line(event: GenerateEvent) -> bytes:
        return encoder.encode(event) + b"\n"

    progress: asyncio.Queue[float] = asyncio.Queue()
    depth = service.batcher.queue_depth if service.batcher is not None else 0
    task = asyncio.create_task(service.run(key, works, progress.put_nowait))
    getter: asyncio.Future[float] | None = None
    try:
        yield line(Accepted(queue_depth=depth))
        last = 0.0
        while True:
            getter = asyncio.ensure_future(progress.get())
            done, _ = await asyncio.wait({getter, task}, timeout=HEARTBEAT_S, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                last = getter.result()
                yield line(Progress(fraction=last))
                continue
            if task in done:
                break
            yield line(Progress(fraction=last))  # heartbeat while queued
        outcome = task.result()
    finally:
        # Normal end, or the client went away: images not started yet are dropped.
        if getter is not None:
            getter.cancel()
        task.cancel()
    images = [
        GeneratedImage(
            index=index,
            data=data,
            media_type=media_type(request.output_format),
            seed=request.seed + index,
            width=request.width,
            height=request.height,
        )
        for index, data in sorted(outcome.images.items())
    ]
    if not images:
        reasons = sorted(set(outcome.failed.values())) or ["no image was produced"]
        yield line(Failed(kind="unavailable", message="; ".join(reasons)))
        return
    yield line(Result(images=images, failed=outcome.failed, gpu_seconds=outcome.gpu_seconds))


@get("/v1/health")
async def health(request: Request[Any, Any, Any]) -> Response[Health]:
    """200 once the model is loaded and its declared shapes are warm; 503 before, while draining,
    and after a device fault."""
    service = _service(request)
    status = service.status
    device = service.model.device if service.model is not None else None
    body = Health(status=status, device=device, detail=service.detail)
    return Response(body, status_code=200 if status == "ok" else 503)


@get("/v1/capacity", guards=[_require_secret])
async def capacity(request: Request[Any, Any, Any]) -> Capacity:
    """Queue depth, batch limits, device and counters: what a router needs to spread load."""
    service = _service(request)
    model, batcher = service.model, service.batcher
    return Capacity(
        status=service.status,
        queue_depth=batcher.queue_depth if batcher else 0,
        in_flight=batcher.in_flight if batcher else 0,
        max_batch=service.config.max_batch,
        batch_window_ms=service.config.batch_window_ms,
        device=model.device if model else None,
        dtype=model.dtype if model else None,
        family=model.family if model else None,
        operations=sorted(model.operations) if model else [],
        samplers=sorted(SUPPORTED_SAMPLERS),
        pipeline_calls=batcher.stats.pipeline_calls if batcher else 0,
        images=batcher.stats.images if batcher else 0,
    )


def create_gpu_app(
    gpu_config: GpuConfig, model_path: str | Path | None, *, service: GpuService | None = None
) -> Litestar:
    """The GPU service as an ASGI app. The model loads and warms up in the background from
    startup (so /v1/health answers 503 meanwhile), or on first use in-process.

    `service` lets a caller pass one built around an already loaded model (tests, benchmarks).
    """
    gpu_service = service or GpuService(gpu_config, model_path)
    starting: list[asyncio.Task[Any]] = []

    async def load(app: Litestar) -> None:
        async def start() -> None:
            try:
                await gpu_service.start()
            except NotAccepting as exc:
                log.error("the GPU service cannot start: %s", exc)

        starting.append(asyncio.create_task(start(), name="gpu-start"))

    async def close(app: Litestar) -> None:
        for task in starting:
            task.cancel()
        await asyncio.gather(*starting, return_exceptions=True)
        await gpu_service.aclose()

    app = Litestar(
        route_handlers=[generate, health, capacity],
        on_startup=[load],
        on_shutdown=[close],
        state=State({"gpu_service": gpu_service}),
        request_max_body_size=MAX_BODY_BYTES,
        openapi_config=None,
        # The host process (the gateway, or uvicorn in gpu-worker) owns logging configuration.
        logging_config=None,
    )
    # The gateway's request id and trace (X-Request-Id, traceparent) continue here, as in the gateway's app.
    app.asgi_handler = RequestContext(app.asgi_handler)
    return app


def gpu_service(app: Litestar) -> GpuService:
    """The service behind an app made by `create_gpu_app` (to drain it, or read its counters)."""
    service: GpuService = app.state.gpu_service
    return service


def model_path(settings: Settings) -> Path:
    if settings.gpu.model_path is not None:
        return Path(settings.gpu.model_path)
    return make_demo_model(settings.data_path / "demo-model")


def run_gpu_worker(settings: Settings) -> int:
    """Serve the GPU service on gpu.host:gpu.port until SIGTERM has drained it; the exit status."""
    if settings.gpu.shared_secret is None:
        print("gpu-worker needs a shared secret: set gpu.secret_env and that variable", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.logging.format)
    tracing = setup_tracing(otel_environment(), service_name="image-gateway-gpu")
    service = GpuService(settings.gpu, model_path(settings))
    app = create_gpu_app(settings.gpu, None, service=service)
    config = uvicorn.Config(
        app, host=settings.gpu.host, port=settings.gpu.port, log_level=settings.log_level, log_config=None
    )
    server = DrainingServer(config, service)
    try:
        server.run()
    finally:
        shutdown_tracing(tracing)  # export what the last requests recorded
    # Non-zero after a device fault, so the container restarts with a fresh CUDA context.
    return 0 if server.started and service.fault is None else 1


class DrainingServer(uvicorn.Server):
    """uvicorn, except that the first SIGTERM drains: new work gets 503, admitted work finishes, then exit.

    A second SIGTERM, or SIGINT, falls back to uvicorn's own shutdown.
    """

    def __init__(self, config: uvicorn.Config, service: GpuService) -> None:
        super().__init__(config)
        self.service = service
        self.draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Signal handler: start draining on the first SIGTERM (only sets flags, as handlers must)."""
        if sig == signal.SIGTERM and not self.draining:
            log.info("SIGTERM: draining; new requests get 503")
            self.draining = True
            self.service.begin_drain()
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        """uvicorn's 0.1 s housekeeping tick: exit once a drain has nothing left to do, or at once
        after a device fault (the CUDA context cannot recover; queued work has already failed)."""
        if self.draining and self.service.idle:
            self.should_exit = True
        if self.service.fault is not None and not self.should_exit:
            log.critical("exiting after a device fault: %s", self.service.fault)
            self.should_exit = True
        return await super().on_tick(counter)
