"""The engine for our own GPU diffusion service, as an HTTP client of it (gateway/gpu/server.py).

The service answers `POST /v1/generate` with NDJSON events: accepted, progress (per denoising
step, repeated as a heartbeat while queued), then one result or error. The event Structs below
mirror gateway/gpu/protocol.py; this module must not import gateway.gpu (that package pulls in
torch), and a test checks that both sides agree.

In-process use (the embedded default) passes a client over `InProcessTransport`, which, unlike
httpx.ASGITransport, hands the response body over while the app is still writing it, so
progress arrives live instead of all at once at the end.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, MutableMapping
from typing import Any, Literal

import httpx
import msgspec

from gateway.config import EngineConfig
from gateway.domain.generation import (
    OPERATIONS,
    SAMPLERS,
    EngineRequest,
    EngineResult,
    EngineSpend,
    GeneratedImage,
    Operation,
    Sampler,
)
from gateway.engines.base import Capabilities, EngineRejected, EngineUnavailable, ProgressCallback, as_asked
from gateway.engines.http import error_for_status, translate_transport_errors, within_budget
from gateway.observability.context import REQUEST_ID_HEADER, current_request_id
from gateway.observability.tracing import inject_traceparent

# Every sampler diffusers has a scheduler for (gateway/gpu/samplers.py); dpmpp_2s_ancestral has none.
DIFFUSION_SAMPLERS: frozenset[Sampler] = frozenset(SAMPLERS) - {"dpmpp_2s_ancestral"}

CAPABILITIES = Capabilities(
    operations=frozenset(OPERATIONS),
    min_side=64,
    max_side=2048,
    side_multiple=8,
    min_steps=1,
    max_steps=150,
    max_n=8,
    samplers=DIFFUSION_SAMPLERS,
)


class _Accepted(msgspec.Struct, frozen=True, tag="accepted", tag_field="type"):
    queue_depth: int


class _Progress(msgspec.Struct, frozen=True, tag="progress", tag_field="type"):
    fraction: float


class _Result(msgspec.Struct, frozen=True, tag="result", tag_field="type"):
    images: list[GeneratedImage]
    failed: dict[int, str] = msgspec.field(default_factory=dict)
    gpu_seconds: float = 0.0


class _Failed(msgspec.Struct, frozen=True, tag="error", tag_field="type"):
    kind: Literal["rejected", "unavailable"]
    message: str


class _ErrorBody(msgspec.Struct, frozen=True):
    kind: str = ""
    detail: str = ""


_Event = _Accepted | _Progress | _Result | _Failed
_EVENTS = msgspec.json.Decoder(_Event)
WHAT = "GPU service"


class DiffusionEngine:
    """Engine `kind = "diffusion"`: a client of one GPU service (remote, or in-process).

    The engine takes ownership of `client` and closes it in `aclose`.
    """

    kind = "diffusion"
    capabilities = CAPABILITIES

    def __init__(self, name: str, config: EngineConfig, client: httpx.AsyncClient) -> None:
        self.name = name
        self._config = config
        self._client = client
        self._url = f"{config.base_url.rstrip('/')}/v1/generate" if config.base_url else "/v1/generate"
        self._headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._timeout = httpx.Timeout(config.request_timeout_s, connect=config.connect_timeout_s)
        self._slots = asyncio.Semaphore(config.max_concurrency)

    def check_options(self, options: Mapping[str, Any], operation: Operation | None = None) -> str | None:
        """The diffusion service takes no engine-specific options."""
        del operation
        for key in options:
            return f"engine_options.diffusion.{key}: unknown option (the diffusion engine has none)"
        return None

    def received(self, request: EngineRequest) -> dict[str, Any]:
        """The service gets the whole request as it is."""
        return as_asked(request)

    async def generate(self, request: EngineRequest, progress: ProgressCallback) -> EngineResult:
        """Send the request to the service and follow its event stream to the result."""
        body = msgspec.json.encode(request)
        # The budget covers waiting for a slot too, as it does the vendors' queues.
        return await within_budget(self._config, WHAT, lambda: self._exchange(body, progress))

    async def _exchange(self, body: bytes, progress: ProgressCallback) -> EngineResult:
        async with self._slots:
            return await self._stream(body, progress)

    async def _stream(self, body: bytes, progress: ProgressCallback) -> EngineResult:
        headers = {**self._headers, "Content-Type": "application/json", "Accept": "application/x-ndjson"}
        # Our own service, unlike a vendor, joins the request's trace and logs under its request id.
        inject_traceparent(headers)
        request_id = current_request_id()
        if request_id is not None:
            headers[REQUEST_ID_HEADER] = request_id
        async with (
            translate_transport_errors(WHAT),
            self._client.stream("POST", self._url, content=body, headers=headers, timeout=self._timeout) as reply,
        ):
            if reply.status_code != 200:
                raw = await reply.aread()
                try:
                    detail = msgspec.json.decode(raw, type=_ErrorBody).detail
                except (msgspec.DecodeError, msgspec.ValidationError):
                    detail = ""
                # 401/403 (our deployment's secret), 501 (a model that cannot do this operation)
                # and 503 (draining) are no fault of the request: another engine may serve it.
                raise error_for_status(
                    reply.status_code, WHAT, retry_after=reply.headers.get("retry-after"), detail=detail
                )
            async for line in reply.aiter_lines():
                if not line.strip():
                    continue
                try:
                    event = _EVENTS.decode(line)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    raise EngineUnavailable(f"{WHAT}: malformed event ({exc})") from exc
                if isinstance(event, _Progress):
                    progress(min(max(event.fraction, 0.0), 1.0))
                elif isinstance(event, _Result):
                    return EngineResult(
                        images=event.images, spend=EngineSpend(gpu_seconds=event.gpu_seconds), failed=event.failed
                    )
                elif isinstance(event, _Failed):
                    if event.kind == "rejected":
                        raise EngineRejected(f"{WHAT} rejected the request: {event.message}")
                    raise EngineUnavailable(f"{WHAT} failed: {event.message}")
        raise EngineUnavailable(f"{WHAT} closed the stream without a result")

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()


class InProcessTransport(httpx.AsyncBaseTransport):
    """Serve requests with an ASGI app in this event loop, streaming the response body.

    The app runs as a task per request; closing the response before the end tells the app the
    client disconnected, as a socket would.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Run the app on `request`; return as soon as it has started its response."""
        body = await request.aread()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": request.method,
            "headers": [(k.lower(), v) for k, v in request.headers.raw],
            "scheme": request.url.scheme,
            "path": request.url.path,
            "raw_path": request.url.raw_path.split(b"?")[0],
            "query_string": request.url.query,
            "server": (request.url.host, request.url.port),
            "client": ("127.0.0.1", 0),
            "root_path": "",
        }
        messages: asyncio.Queue[MutableMapping[str, Any] | BaseException | None] = asyncio.Queue()
        disconnected = asyncio.Event()
        body_sent = False

        async def receive() -> dict[str, Any]:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            await messages.put(message)

        async def run() -> None:
            try:
                await self.app(scope, receive, send)
            except Exception as exc:  # handed to the reader, which turns it into an httpx error
                await messages.put(exc)
            finally:
                await messages.put(None)

        task = asyncio.get_running_loop().create_task(run())
        first = await messages.get()
        if not isinstance(first, MutableMapping) or first.get("type") != "http.response.start":
            disconnected.set()
            await task
            reason = f" ({type(first).__name__})" if isinstance(first, BaseException) else ""
            # Typed like a broken connection, so the engine translates it like one.
            raise httpx.RemoteProtocolError(f"in-process app failed before answering{reason}", request=request)
        stream = _AppStream(messages, task, disconnected)
        return httpx.Response(first["status"], headers=first.get("headers", []), stream=stream, request=request)


class _AppStream(httpx.AsyncByteStream):
    def __init__(
        self,
        messages: asyncio.Queue[MutableMapping[str, Any] | BaseException | None],
        task: asyncio.Task[None],
        disconnected: asyncio.Event,
    ) -> None:
        self._messages = messages
        self._task = task
        self._disconnected = disconnected

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            message = await self._messages.get()
            if message is None:
                return
            if isinstance(message, BaseException):
                raise httpx.ReadError(f"in-process app failed mid-answer ({type(message).__name__})") from message
            if message.get("type") != "http.response.body":
                continue
            if chunk := message.get("body", b""):
                yield chunk
            if not message.get("more_body", False):
                return

    async def aclose(self) -> None:
        self._disconnected.set()
        if not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 5.0)
            except TimeoutError:
                self._task.cancel()


def in_process_client(app: Any, *, base_url: str = "http://gpu.in-process") -> httpx.AsyncClient:
    """An httpx client that serves every request with `app` in this process (live streaming)."""
    return httpx.AsyncClient(transport=InProcessTransport(app), base_url=base_url)
