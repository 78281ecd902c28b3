"""The GPU service over HTTP: auth, streaming, validation, capacity and draining."""

from __future__ import annotations

import asyncio
import base64
import signal
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest

from gateway.config import GpuConfig, Settings
from gateway.domain.generation import EngineRequest
from gateway.gpu import protocol
from gateway.gpu.pipelines import LoadedModel
from gateway.gpu.server import DrainingServer, create_gpu_app, gpu_service, run_gpu_worker
from gateway.gpu.service import GpuService
from tests.integration.gpu.conftest import SECRET, asgi_client, gpu_config
from tests.integration.gpu.images import png, size_of
from tests.waiting import eventually

AUTH = {"Authorization": f"Bearer {SECRET}"}
EVENTS = msgspec.json.Decoder(protocol.GenerateEvent)


def body(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "job_id": "job",
        "operation": "text-to-image",
        "prompt": "a lighthouse at dusk",
        "width": 64,
        "height": 64,
        "steps": 2,
        "guidance_scale": 6.0,
        "seed": 3,
        "n": 1,
    }
    values.update(overrides)
    return values


@pytest.fixture
async def client(demo_model: LoadedModel) -> AsyncIterator[httpx.AsyncClient]:
    app = create_gpu_app(gpu_config(), None, service=GpuService(gpu_config(), None, model=demo_model))
    async with asgi_client(app) as c:
        yield c
    await gpu_service(app).aclose()


def events(response: httpx.Response) -> list[protocol.GenerateEvent]:
    return [EVENTS.decode(line) for line in response.text.splitlines() if line]


async def test_generate_streams_acceptance_progress_then_the_result(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/generate", json=body(n=2), headers=AUTH)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(protocol.NDJSON)
    stream = events(response)
    assert isinstance(stream[0], protocol.Accepted)
    fractions = [e.fraction for e in stream if isinstance(e, protocol.Progress)]
    assert fractions == sorted(fractions)
    assert fractions[-1] == pytest.approx(1.0)
    result = stream[-1]
    assert isinstance(result, protocol.Result)
    assert [(i.index, i.seed, i.media_type) for i in result.images] == [(0, 3, "image/png"), (1, 4, "image/png")]
    assert size_of(result.images[0].data) == (64, 64)
    assert result.gpu_seconds > 0


async def test_image_to_image_accepts_base64_inputs(client: httpx.AsyncClient) -> None:
    image = {
        "data": base64.b64encode(png(64, 64, (10, 200, 10))).decode(),
        "media_type": "image/png",
        "width": 64,
        "height": 64,
    }
    response = await client.post(
        "/v1/generate", json=body(operation="image-to-image", image=image, strength=0.5, steps=4), headers=AUTH
    )
    assert isinstance(events(response)[-1], protocol.Result)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": SECRET}])
async def test_wrong_or_missing_shared_secret_is_refused(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    assert (await client.post("/v1/generate", json=body(), headers=headers)).status_code == 401
    assert (await client.get("/v1/capacity", headers=headers)).status_code == 401


async def test_health_needs_no_secret(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/health")
    assert response.status_code == 200
    assert msgspec.json.decode(response.content, type=protocol.Health) == protocol.Health(status="ok", device="cpu")


async def test_without_a_configured_secret_in_process_calls_need_none(demo_model: LoadedModel) -> None:
    config = GpuConfig(device="cpu", batch_window_ms=0.0)
    app = create_gpu_app(config, None, service=GpuService(config, None, model=demo_model))
    async with asgi_client(app) as c:
        assert (await c.get("/v1/capacity")).status_code == 200
    await gpu_service(app).aclose()


@pytest.mark.parametrize(
    ("overrides", "status", "field"),
    [
        ({"width": 100}, 422, "width"),
        ({"steps": 0}, 422, "steps"),
        ({"n": 9}, 422, "n"),
        ({"sampler": "dpmpp_2s_ancestral"}, 422, "sampler"),
        ({"operation": "inpaint"}, 422, "image"),
        (
            {
                "operation": "image-to-image",
                "steps": 2,
                "strength": 0.3,
                "image": {"data": "", "media_type": "image/png", "width": 1, "height": 1},
            },
            422,
            "strength",
        ),
        (
            {
                "operation": "image-to-image",
                "image": {
                    "data": base64.b64encode(b"not an image").decode(),
                    "media_type": "image/png",
                    "width": 1,
                    "height": 1,
                },
            },
            422,
            "image",
        ),
        ({"prompt": 5}, 422, "prompt"),
    ],
)
async def test_invalid_requests_get_422_naming_the_field(
    client: httpx.AsyncClient, overrides: dict[str, Any], status: int, field: str
) -> None:
    response = await client.post("/v1/generate", json=body(**overrides), headers=AUTH)
    assert response.status_code == status
    error = msgspec.json.decode(response.content, type=protocol.ErrorBody)
    assert error.kind == "rejected"
    assert field in error.detail


async def test_capacity_reports_device_limits_and_counters(client: httpx.AsyncClient) -> None:
    await client.post("/v1/generate", json=body(), headers=AUTH)
    capacity = msgspec.json.decode((await client.get("/v1/capacity", headers=AUTH)).content, type=protocol.Capacity)
    assert (capacity.device, capacity.dtype, capacity.family) == ("cpu", "float32", "sd15")
    assert capacity.max_batch == 8
    assert capacity.queue_depth == 0
    assert capacity.pipeline_calls >= 1
    assert capacity.images >= 1
    assert "dpmpp_2s_ancestral" not in capacity.samplers


async def test_draining_refuses_new_work_and_finishes_admitted_work(demo_model: LoadedModel) -> None:
    service = GpuService(gpu_config(batch_window_ms=300.0), None, model=demo_model)
    app = create_gpu_app(gpu_config(), None, service=service)
    async with asgi_client(app) as c:
        admitted = asyncio.create_task(c.post("/v1/generate", json=body(), headers=AUTH))
        await eventually(lambda: not service.idle, what="the request waiting inside the batching window")
        service.begin_drain()
        refused = await c.post("/v1/generate", json=body(), headers=AUTH)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "5"
        assert (await c.get("/v1/health")).status_code == 503
        finished = await admitted
        assert isinstance(events(finished)[-1], protocol.Result)
    assert service.idle
    await service.aclose()


async def test_sigterm_starts_a_drain_and_the_server_exits_once_idle(demo_model: LoadedModel) -> None:
    import uvicorn

    service = GpuService(gpu_config(batch_window_ms=300.0), None, model=demo_model)
    server = DrainingServer(uvicorn.Config(create_gpu_app(gpu_config(), None, service=service)), service)
    key, works = await service.admit(msgspec.convert(body(), EngineRequest))
    running = asyncio.create_task(service.run(key, works, lambda f: None))
    await asyncio.sleep(0)
    server.handle_exit(signal.SIGTERM, None)
    assert service.draining
    assert not server.should_exit
    await server.on_tick(1)
    assert not server.should_exit  # the admitted request is still waiting for its batch
    await running
    await server.on_tick(2)
    assert server.should_exit
    await service.aclose()


def test_gpu_worker_refuses_to_listen_without_a_shared_secret(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_gpu_worker(Settings(gpu=GpuConfig(model_path="/nonexistent"))) == 2
    assert "shared secret" in capsys.readouterr().err


class DeviceFaultModel(LoadedModel):
    """Fails its first pipeline call with the error torch raises after an illegal memory access."""

    def call_pipeline(self, pipe: Any, kwargs: dict[str, Any]) -> Any:
        import torch

        raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered")


async def test_a_cuda_error_other_than_out_of_memory_makes_the_service_unhealthy(demo_model: LoadedModel) -> None:
    model = DeviceFaultModel(demo_model.pipelines["text-to-image"], family="sd15", device="cpu")
    service = GpuService(gpu_config(), None, model=model)
    app = create_gpu_app(gpu_config(), None, service=service)
    async with asgi_client(app) as c:
        failed = events(await c.post("/v1/generate", json=body(), headers=AUTH))[-1]
        assert failed == protocol.Failed(kind="unavailable", message="device failure")
        health = await c.get("/v1/health")
        assert health.status_code == 503
        decoded = msgspec.json.decode(health.content, type=protocol.Health)
        assert decoded.status == "failed"
        assert decoded.detail is not None
        assert "illegal memory access" in decoded.detail
        refused = await c.post("/v1/generate", json=body(), headers=AUTH)
        assert refused.status_code == 503
        assert msgspec.json.decode(refused.content, type=protocol.ErrorBody).kind == "unavailable"
    await service.aclose()


async def test_gpu_worker_exits_after_a_device_fault(demo_model: LoadedModel) -> None:
    import uvicorn

    service = GpuService(gpu_config(), None, model=demo_model)
    server = DrainingServer(uvicorn.Config(create_gpu_app(gpu_config(), None, service=service)), service)
    await server.on_tick(1)
    assert not server.should_exit
    service.fault = "device fault: AcceleratorError: CUDA error: an illegal memory access was encountered"
    await server.on_tick(2)
    assert server.should_exit
    await service.aclose()
