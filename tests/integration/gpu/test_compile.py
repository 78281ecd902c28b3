"""Compiled serving on the demo model: declared shapes warm before ready, any other shape runs eager.

Most tests use `StrictCompiler` instead of torch.compile: it behaves like a `fullgraph=True`
compile that has hit dynamo's recompile limit (any shape it has not seen by the end of warm-up
raises), and costs nothing. One slow test runs the real torch.compile (dynamo, eager backend).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import torch
from diffusers import DiffusionPipeline
from litestar.testing import AsyncTestClient

from gateway.config import GpuConfig
from gateway.domain.generation import EngineRequest
from gateway.gpu import protocol
from gateway.gpu.compiled import shape_key
from gateway.gpu.pipelines import LoadedModel, WarmShape, load_model
from gateway.gpu.server import create_gpu_app
from gateway.gpu.service import GpuService
from tests.integration.gpu.conftest import SECRET, gpu_config
from tests.integration.gpu.images import pixels
from tests.waiting import eventually

AUTH = {"Authorization": f"Bearer {SECRET}"}
EVENTS = msgspec.json.Decoder(protocol.GenerateEvent)


class StrictCompiler:
    """torch.compile's stand-in: passes calls through, and once `sealed` raises on any new shape."""

    def __init__(self, *, block: threading.Event | None = None, oom_at_batch: int | None = None) -> None:
        self.sealed = False
        self.options: list[dict[str, Any]] = []
        self.compiled_calls: list[Any] = []
        self.block = block
        self.oom_at_batch = oom_at_batch

    def __call__(self, fn: Callable[..., Any], **options: Any) -> Callable[..., Any]:
        self.options.append(options)
        seen: set[Any] = set()

        def compiled(*args: Any, **kwargs: Any) -> Any:
            key = shape_key((args, kwargs))
            if key not in seen:
                if self.sealed:
                    raise RuntimeError("FailOnRecompileLimitHit (simulated): recompile_limit reached")
                if self.block is not None:
                    self.block.wait(10)
                if self.oom_at_batch is not None and args[0].shape[0] >= self.oom_at_batch:
                    raise torch.OutOfMemoryError("CUDA out of memory (injected)")
                seen.add(key)
            self.compiled_calls.append(key)
            return fn(*args, **kwargs)

        return compiled


def compiled_config(**overrides: Any) -> GpuConfig:
    values: dict[str, Any] = {"compile": True, "resolutions": ("64x64",), "batch_sizes": (1, 2)}
    values.update(overrides)
    return gpu_config(**values)


def compiled_model(path: Path, config: GpuConfig, compiler: Callable[..., Any]) -> LoadedModel:
    # A fresh pipeline: gating replaces the UNet's forward in place, so never the shared demo model.
    base = DiffusionPipeline.from_pretrained(path, local_files_only=True, requires_safety_checker=False)
    return LoadedModel(base, family="sd15", device="cpu", config=config, compiler=compiler)


def request(**overrides: Any) -> EngineRequest:
    values: dict[str, Any] = {
        "job_id": "job",
        "operation": "text-to-image",
        "prompt": "a red fox",
        "width": 64,
        "height": 64,
        "steps": 2,
        "guidance_scale": 7.0,
        "seed": 5,
        "n": 1,
    }
    values.update(overrides)
    return msgspec.convert(values, EngineRequest)


async def generate(service: GpuService, req: EngineRequest) -> dict[int, bytes]:
    key, works = await service.admit(req)
    outcome = await service.run(key, works, lambda f: None)
    assert outcome.failed == {}
    return outcome.images


def test_declared_shapes_cover_each_resolution_batch_size_and_guidance(demo_model: LoadedModel) -> None:
    config = gpu_config(resolutions=("64x64", "128x64"), batch_sizes=(1, 2, 4), batch_limits={"128x64": 2})
    model = LoadedModel(demo_model.pipelines["text-to-image"], family="sd15", device="cpu", config=config)
    shapes = [(s.width, s.height, s.batch, s.guidance) for s in model.warm_shapes()]
    # Without guidance the UNet batch is the image count: 2 and 4 are already warm from 1 and 2 with guidance.
    assert shapes == [
        (64, 64, 1, True),
        (64, 64, 1, False),
        (64, 64, 2, True),
        (64, 64, 4, True),
        (128, 64, 1, True),
        (128, 64, 1, False),
        (128, 64, 2, True),
    ]
    assert LoadedModel(demo_model.pipelines["text-to-image"], family="sd15", device="cpu").warm_shapes() == [
        WarmShape(64, 64, b, g) for b, g in ((1, True), (1, False), (2, True), (4, True), (8, True))
    ]  # nothing declared: the model's native size (the demo UNet's 8x8 latent is 64 px)
    only_with = LoadedModel(
        demo_model.pipelines["text-to-image"],
        family="sd15",
        device="cpu",
        config=gpu_config(batch_sizes=(1, 8), compile_guidance="with"),
    )
    assert only_with.warm_shapes() == [WarmShape(64, 64, 1, True), WarmShape(64, 64, 8, True)]


async def test_an_undeclared_shape_with_compile_on_is_served_eager_and_logged(
    demo_model_path: Path, demo_model: LoadedModel, caplog: pytest.LogCaptureFixture
) -> None:
    compiler = StrictCompiler()
    config = compiled_config()
    model = compiled_model(demo_model_path, config, compiler)
    assert {o["fullgraph"] for o in compiler.options} == {True}
    service = GpuService(config, None, model=model)
    statuses = [service.status]
    await service.start()
    compiler.sealed = True
    statuses.append(service.status)
    assert statuses == ["loading", "ok"]
    warmed_calls = len(compiler.compiled_calls)

    with caplog.at_level(logging.WARNING, logger="gateway.gpu.compiled"):
        undeclared = await generate(service, request(width=96, height=64))
        undeclared_batch = await generate(service, request(n=3, seed=40))  # batches of 2 and 1: declared
    logged = [r.getMessage() for r in caplog.records if "not declared" in r.getMessage()]
    assert len(logged) == 2  # once for the UNet, once for the VAE decoder; none for the declared batches
    assert logged[0].startswith("unet: shape [2, 4, 8, 12] float32")
    assert logged[1].startswith("vae decoder: shape [1, 4, 8, 12] float32")
    assert len(compiler.compiled_calls) > warmed_calls  # the declared 64x64 batches ran compiled
    assert sorted(undeclared_batch) == [0, 1, 2]

    eager = GpuService(gpu_config(batch_window_ms=0.0), None, model=demo_model)
    reference = await generate(eager, request(width=96, height=64))
    assert abs(pixels(undeclared[0]) - pixels(reference[0])).max() == 0
    await service.aclose()
    await eager.aclose()


async def test_health_is_not_ready_until_every_declared_shape_is_warm(demo_model_path: Path) -> None:
    release = threading.Event()
    config = compiled_config()
    service = GpuService(config, None, model=compiled_model(demo_model_path, config, StrictCompiler(block=release)))
    app = create_gpu_app(config, None, service=service)
    async with AsyncTestClient(app) as client:  # runs the startup hook, which warms in the background
        response = await client.get("/v1/health")
        assert response.status_code == 503
        health = msgspec.json.decode(response.content, type=protocol.Health)
        assert health.status == "warming"
        assert health.detail == "compiled 0 of 3 declared shapes"
        release.set()

        async def healthy() -> Any:
            response = await client.get("/v1/health")
            return response if response.status_code == 200 else None

        response = await eventually(healthy, what="the service healthy once warm")
        assert msgspec.json.decode(response.content, type=protocol.Health).status == "ok"
        assert service.warm_done == service.warm_total == 3


async def test_a_declared_batch_that_does_not_fit_lowers_the_limit_at_warm_up(demo_model_path: Path) -> None:
    config = compiled_config(batch_sizes=(1, 2, 4))
    model = compiled_model(demo_model_path, config, StrictCompiler(oom_at_batch=4))  # UNet batch 4: 2 images x CFG
    service = GpuService(config, None, model=model)
    await service.start()
    assert service.status == "ok"
    key, works = await service.admit(request(n=4))
    assert service.batch_limit(key) == 1
    outcome = await service.run(key, works, lambda f: None)
    assert sorted(outcome.images) == [0, 1, 2, 3]
    assert service.batcher is not None
    assert list(service.batcher.stats.recent_batch_sizes) == [1, 1, 1, 1]
    await service.aclose()


@pytest.mark.slow
async def test_real_torch_compile_serves_declared_and_undeclared_shapes(
    demo_model_path: Path, demo_model: LoadedModel, tmp_path: Path
) -> None:
    config = compiled_config(batch_sizes=(2,), compile_backend="eager", compile_cache_dir=str(tmp_path))
    model = load_model(demo_model_path, config)
    service = GpuService(config, None, model=model)
    await service.start()
    assert model.gates is not None
    assert len(model.gates[0].warmed) == 2  # UNet batch 4 (2 images with guidance) and 2 (without)
    eager = GpuService(gpu_config(batch_window_ms=0.0), None, model=demo_model)
    for req in (request(n=2), request(width=64, height=128)):
        mine, reference = await generate(service, req), await generate(eager, req)
        for index, data in mine.items():
            assert abs(pixels(data) - pixels(reference[index])).max() <= 3
    assert len(model.gates[0].eager_shapes) == 1
    await service.aclose()
    await eager.aclose()
