"""The diffusion engine's HTTP exchange against a mock GPU service (no torch)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import msgspec
import pytest

from gateway.config import EngineConfig, Secret
from gateway.domain.generation import EngineRequest, GeneratedImage
from gateway.engines.base import (
    EngineCredentialsRefused,
    EngineRateLimited,
    EngineRejected,
    EngineTimeout,
    EngineUnavailable,
)
from gateway.engines.diffusion import DIFFUSION_SAMPLERS, DiffusionEngine, in_process_client
from gateway.gpu import protocol
from gateway.gpu.samplers import SUPPORTED_SAMPLERS

REQUEST = EngineRequest(
    job_id="job-1",
    operation="text-to-image",
    prompt="a lighthouse",
    width=64,
    height=64,
    steps=2,
    guidance_scale=7.0,
    seed=42,
    n=1,
)


def ndjson(*events: protocol.GenerateEvent) -> bytes:
    return b"".join(msgspec.json.encode(e) + b"\n" for e in events)


def engine(handler: Callable[[httpx.Request], httpx.Response], **config: object) -> DiffusionEngine:
    cfg = msgspec.convert({"kind": "diffusion", "base_url": "http://gpu:8090", **config}, EngineConfig)
    return DiffusionEngine("local", cfg, httpx.AsyncClient(transport=httpx.MockTransport(handler)))


IMAGE = GeneratedImage(index=0, data=b"\x89PNG...", media_type="image/png", seed=42, width=64, height=64)


async def test_result_and_progress_events_become_an_engine_result() -> None:
    body = ndjson(
        protocol.Accepted(queue_depth=0),
        protocol.Progress(fraction=0.5),
        protocol.Progress(fraction=1.0),
        protocol.Result(images=[IMAGE], failed={1: "out of device memory"}, gpu_seconds=0.25),
    )
    seen: list[float] = []
    eng = engine(lambda r: httpx.Response(200, content=body))
    result = await eng.generate(REQUEST, seen.append)
    assert seen == [0.5, 1.0]
    assert result.images == [IMAGE]
    assert result.failed == {1: "out of device memory"}
    assert result.spend.gpu_seconds == 0.25
    await eng.aclose()


async def test_request_carries_the_shared_secret_and_nothing_of_the_tenants_password() -> None:
    captured: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        captured.append(request)
        return httpx.Response(200, content=ndjson(protocol.Result(images=[IMAGE])))

    eng = engine(handler, api_key=Secret("s3cret"))
    await eng.generate(REQUEST, lambda f: None)
    (sent,) = captured
    assert sent.url == "http://gpu:8090/v1/generate"
    assert sent.headers["authorization"] == "Bearer s3cret"
    payload = json.loads(sent.content)
    assert "download_password" not in payload  # engines never see it: it is not in EngineRequest
    assert msgspec.convert(payload, EngineRequest).prompt == "a lighthouse"
    await eng.aclose()


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (422, EngineRejected),
        (400, EngineRejected),
        (401, EngineCredentialsRefused),
        (429, EngineRateLimited),
        (500, EngineUnavailable),
        (501, EngineUnavailable),
        (503, EngineUnavailable),
        (504, EngineTimeout),
    ],
)
async def test_http_statuses_map_to_engine_errors_by_code(status: int, error: type[Exception]) -> None:
    body = msgspec.json.encode(protocol.ErrorBody(kind="rejected", detail="width: bad"))
    eng = engine(lambda r: httpx.Response(status, content=body, headers={"Retry-After": "3"}))
    with pytest.raises(error) as caught:
        await eng.generate(REQUEST, lambda f: None)
    assert type(caught.value) is error
    if isinstance(caught.value, EngineRateLimited):
        assert caught.value.retry_after == 3.0
    await eng.aclose()


@pytest.mark.parametrize(
    ("exc", "error"),
    [
        (httpx.ConnectError("refused"), EngineUnavailable),
        (httpx.ReadTimeout("slow"), EngineTimeout),
        (httpx.RemoteProtocolError("cut"), EngineUnavailable),
    ],
)
async def test_transport_failures_map_to_engine_errors_by_type(exc: Exception, error: type[Exception]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    eng = engine(handler)
    with pytest.raises(error):
        await eng.generate(REQUEST, lambda f: None)
    await eng.aclose()


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (ndjson(protocol.Failed(kind="rejected", message="bad mask")), EngineRejected),
        (ndjson(protocol.Failed(kind="unavailable", message="out of device memory")), EngineUnavailable),
        (ndjson(protocol.Accepted(queue_depth=0), protocol.Progress(fraction=0.5)), EngineUnavailable),
        (b'{"type": "result", "images": "nope"}\n', EngineUnavailable),
        (b"not json\n", EngineUnavailable),
    ],
)
async def test_error_events_and_broken_streams_map_to_engine_errors(body: bytes, error: type[Exception]) -> None:
    eng = engine(lambda r: httpx.Response(200, content=body))
    with pytest.raises(error) as caught:
        await eng.generate(REQUEST, lambda f: None)
    assert type(caught.value) is error
    await eng.aclose()


class StalledStream(httpx.AsyncByteStream):
    """Accepts the request, then says nothing more."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield ndjson(protocol.Accepted(queue_depth=0))
        await asyncio.Event().wait()  # silent until the reader gives up


async def test_whole_job_budget_raises_engine_timeout() -> None:
    eng = engine(lambda r: httpx.Response(200, stream=StalledStream()), timeout_s=0.1)
    with pytest.raises(EngineTimeout):
        await eng.generate(REQUEST, lambda f: None)
    await eng.aclose()


def test_engine_and_service_agree_on_samplers() -> None:
    assert DIFFUSION_SAMPLERS == SUPPORTED_SAMPLERS
    assert "dpmpp_2s_ancestral" not in DIFFUSION_SAMPLERS


def test_capabilities_refuse_sides_that_are_not_multiples_of_eight() -> None:
    eng = engine(lambda r: httpx.Response(500))
    odd = msgspec.structs.replace(REQUEST, width=100)
    assert eng.capabilities.check(odd) == "width must be a multiple of 8"
    assert eng.capabilities.check(msgspec.structs.replace(REQUEST, sampler="dpmpp_2s_ancestral")) is not None
    assert eng.capabilities.check(REQUEST) is None


def test_engine_options_are_refused_by_name() -> None:
    eng = engine(lambda r: httpx.Response(500))
    assert eng.check_options({}) is None
    assert eng.check_options({"clip_skip": 2}) == (
        "engine_options.diffusion.clip_skip: unknown option (the diffusion engine has none)"
    )


def test_engine_module_does_not_import_the_gpu_package() -> None:
    import ast
    import inspect

    import gateway.engines.diffusion as module

    tree = ast.parse(inspect.getsource(module))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    assert not {m for m in imported if m and m.startswith(("gateway.gpu", "torch"))}


async def crash_before_answering(scope: Any, receive: Any, send: Any) -> None:
    raise RuntimeError("bug in the app")


async def crash_mid_answer(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/x-ndjson")]})
    await send({"type": "http.response.body", "body": ndjson(protocol.Accepted(queue_depth=0)), "more_body": True})
    raise RuntimeError("bug in the app")


@pytest.mark.parametrize("app", [crash_before_answering, crash_mid_answer])
async def test_an_in_process_app_crash_is_an_unavailable_engine(app: Any) -> None:
    cfg = EngineConfig(kind="diffusion")
    eng = DiffusionEngine("local", cfg, in_process_client(app))
    with pytest.raises(EngineUnavailable):
        await eng.generate(REQUEST, lambda f: None)
    await eng.aclose()


async def test_in_process_transport_streams_chunks_as_the_app_sends_them() -> None:
    release = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first\n", "more_body": True})
        await release.wait()
        await send({"type": "http.response.body", "body": b"second\n", "more_body": False})

    async with in_process_client(app) as client, client.stream("GET", "/") as response:
        lines = response.aiter_lines()
        assert await anext(lines) == "first"  # arrives while the app still waits
        release.set()
        assert await anext(lines) == "second"
