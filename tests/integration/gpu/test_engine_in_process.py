"""The diffusion engine against the GPU app in the same process (the embedded default)."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from gateway.config import EngineConfig, Secret
from gateway.domain.generation import EngineRequest, ImageInput
from gateway.engines.base import EngineRejected, EngineUnavailable
from gateway.engines.diffusion import DiffusionEngine, in_process_client
from gateway.gpu.pipelines import LoadedModel
from gateway.gpu.server import create_gpu_app, gpu_service
from gateway.gpu.service import GpuService
from tests.integration.gpu.conftest import SECRET, asgi_client, gpu_config
from tests.integration.gpu.images import half_mask, png, size_of

CONFIG = EngineConfig(kind="diffusion", api_key=Secret(SECRET), timeout_s=30.0)


def request(**overrides: Any) -> EngineRequest:
    values: dict[str, Any] = {
        "job_id": "job",
        "operation": "text-to-image",
        "prompt": "a paper boat",
        "width": 64,
        "height": 64,
        "steps": 2,
        "guidance_scale": 5.0,
        "seed": 11,
        "n": 1,
    }
    values.update(overrides)
    return msgspec.convert(values, EngineRequest)


@pytest.fixture
async def engine(demo_model: LoadedModel) -> AsyncIterator[DiffusionEngine]:
    app = create_gpu_app(gpu_config(), None, service=GpuService(gpu_config(), None, model=demo_model))
    client = asgi_client(app)
    eng = DiffusionEngine("local", CONFIG, client)
    yield eng
    await eng.aclose()
    await gpu_service(app).aclose()


@pytest.mark.parametrize("operation", ["text-to-image", "image-to-image", "inpaint"])
async def test_engine_generates_every_operation_in_process(engine: DiffusionEngine, operation: str) -> None:
    inputs: dict[str, Any] = {}
    if operation != "text-to-image":
        inputs["image"] = ImageInput(data=png(64, 64, (0, 0, 255)), media_type="image/png", width=64, height=64)
        inputs["strength"] = 1.0
    if operation == "inpaint":
        inputs["mask"] = ImageInput(data=half_mask(64, 64), media_type="image/png", width=64, height=64)
    seen: list[float] = []
    result = await engine.generate(request(operation=operation, n=2, output_format="jpeg", **inputs), seen.append)
    assert [(i.index, i.seed, i.media_type) for i in result.images] == [(0, 11, "image/jpeg"), (1, 12, "image/jpeg")]
    assert all(size_of(i.data) == (64, 64) for i in result.images)
    assert seen
    assert seen[-1] == pytest.approx(1.0)
    assert result.spend.gpu_seconds > 0


async def test_an_invalid_request_is_rejected_without_fallback(engine: DiffusionEngine) -> None:
    with pytest.raises(EngineRejected) as caught:
        await engine.generate(request(operation="image-to-image"), lambda f: None)
    assert "image" in caught.value.message


async def test_a_wrong_secret_is_an_unavailable_engine_not_a_bad_request(demo_model: LoadedModel) -> None:
    app = create_gpu_app(gpu_config(), None, service=GpuService(gpu_config(), None, model=demo_model))
    config = msgspec.structs.replace(CONFIG, api_key=Secret("not-the-secret"))
    eng = DiffusionEngine("local", config, in_process_client(app))
    with pytest.raises(EngineUnavailable) as caught:
        await eng.generate(request(), lambda f: None)
    assert "401" in caught.value.message
    await eng.aclose()


class GatedModel(LoadedModel):
    """Holds the denoising loop after its first step until the test has seen progress."""

    def __init__(self, base: Any) -> None:
        super().__init__(base, family="sd15", device="cpu")
        self.progress_seen = threading.Event()
        self.released_by_progress = False

    def call_pipeline(self, pipe: Any, kwargs: dict[str, Any]) -> Any:
        step_end = kwargs["callback_on_step_end"]

        def gated(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            out: dict[str, Any] = step_end(pipeline, step, timestep, tensors)
            if step == 0:
                # Buffered transports deliver nothing before the app ends, so this would time out.
                self.released_by_progress = self.progress_seen.wait(timeout=3)
            return out

        return super().call_pipeline(pipe, {**kwargs, "callback_on_step_end": gated})


async def test_in_process_transport_delivers_progress_while_the_image_is_still_being_made(
    demo_model: LoadedModel,
) -> None:
    model = GatedModel(demo_model.pipelines["text-to-image"])
    service = GpuService(gpu_config(batch_window_ms=0.0), None, model=model)
    eng = DiffusionEngine("local", CONFIG, in_process_client(create_gpu_app(gpu_config(), None, service=service)))
    seen: list[float] = []

    def on_progress(fraction: float) -> None:
        seen.append(fraction)
        model.progress_seen.set()

    result = await eng.generate(request(steps=4), on_progress)
    assert len(result.images) == 1
    assert model.released_by_progress, "the first progress event must arrive while the loop is still running"
    assert seen[0] == pytest.approx(0.25)
    await eng.aclose()
    await service.aclose()
