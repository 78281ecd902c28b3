"""The demo model and the pipelines on CPU: every operation, seeds, batching equivalence, OOM splitting."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import msgspec
import pytest

from gateway.domain.generation import EngineRequest, ImageInput
from gateway.gpu.batcher import Batcher
from gateway.gpu.demo_model import main_make_demo_model, make_demo_model
from gateway.gpu.pipelines import LoadedModel, detect_family, load_model
from gateway.gpu.samplers import SUPPORTED_SAMPLERS
from gateway.gpu.service import GpuService
from gateway.gpu.work import Batch, ImageWork
from tests.integration.gpu.conftest import gpu_config
from tests.integration.gpu.images import half_mask, pixels, png, size_of

# Batched and unbatched float32 convolutions sum in different orders; after a few steps and the
# VAE the difference stays within a couple of 8-bit levels.
PIXEL_TOLERANCE = 3


def request(**overrides: Any) -> EngineRequest:
    values: dict[str, Any] = {
        "job_id": "job",
        "operation": "text-to-image",
        "prompt": "a red fox",
        "width": 64,
        "height": 64,
        "steps": 3,
        "guidance_scale": 7.0,
        "seed": 1,
        "n": 1,
    }
    values.update(overrides)
    return msgspec.convert(values, EngineRequest)


def inputs(width: int = 64, height: int = 64) -> dict[str, ImageInput]:
    return {
        "image": ImageInput(data=png(96, 80, (200, 60, 20)), media_type="image/png", width=96, height=80),
        "mask": ImageInput(data=half_mask(width, height), media_type="image/png", width=width, height=height),
    }


async def generate(service: GpuService, req: EngineRequest) -> dict[int, bytes]:
    key, works = await service.admit(req)
    outcome = await service.run(key, works, lambda f: None)
    assert outcome.failed == {}
    return outcome.images


def test_demo_model_is_deterministic_and_built_once(tmp_path: Path, demo_model_path: Path) -> None:
    again = make_demo_model(tmp_path / "copy")
    digest = [
        hashlib.sha256((d / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()).digest()
        for d in (again, demo_model_path)
    ]
    assert digest[0] == digest[1]
    stamp = (again / "model_index.json").stat().st_mtime_ns
    assert main_make_demo_model(str(again)) == 0
    assert (again / "model_index.json").stat().st_mtime_ns == stamp
    assert detect_family(again) == "sd15"


@pytest.mark.parametrize("operation", ["text-to-image", "image-to-image", "inpaint"])
async def test_each_operation_makes_n_images_of_the_requested_size(demo_model: LoadedModel, operation: str) -> None:
    service = GpuService(gpu_config(), None, model=demo_model)
    extra = inputs(64, 96) if operation != "text-to-image" else {}
    images = await generate(service, request(operation=operation, width=64, height=96, n=2, strength=0.75, **extra))
    assert sorted(images) == [0, 1]
    assert {size_of(data) for data in images.values()} == {(64, 96)}
    assert images[0] != images[1]  # image i uses seed + i
    await service.aclose()


async def test_same_seed_gives_the_same_image(demo_model: LoadedModel) -> None:
    service = GpuService(gpu_config(batch_window_ms=0.0), None, model=demo_model)
    first = await generate(service, request(seed=7))
    second = await generate(service, request(seed=7))
    other = await generate(service, request(seed=8))
    assert first[0] == second[0]
    assert first[0] != other[0]
    await service.aclose()


async def test_batched_requests_match_unbatched_ones_and_take_fewer_calls(demo_model: LoadedModel) -> None:
    requests = [
        request(prompt="a red fox", seed=1, n=2),
        request(prompt="a blue whale", negative_prompt="blurry", seed=50),
        request(prompt="", seed=99, output_format="webp"),
    ]
    batched_service = GpuService(gpu_config(batch_window_ms=200.0), None, model=demo_model)
    batched = await asyncio.gather(*(generate(batched_service, r) for r in requests))
    assert batched_service.batcher is not None
    assert batched_service.batcher.stats.pipeline_calls == 1
    assert batched_service.batcher.stats.images == 4

    alone_service = GpuService(gpu_config(max_batch=1, batch_window_ms=0.0), None, model=demo_model)
    for req, images in zip(requests, batched, strict=True):
        alone = await generate(alone_service, req)
        for index, data in alone.items():
            difference = abs(pixels(data) - pixels(images[index])).max()
            assert difference <= PIXEL_TOLERANCE, (req.prompt, index, difference)
    assert alone_service.batcher is not None
    assert alone_service.batcher.stats.pipeline_calls == 4
    await batched_service.aclose()
    await alone_service.aclose()


class OomAboveOne(LoadedModel):
    """Raises torch's own out-of-memory error for any batch larger than one image."""

    def call_pipeline(self, pipe: Any, kwargs: dict[str, Any]) -> Any:
        import torch

        if len(kwargs["prompt"]) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return super().call_pipeline(pipe, kwargs)


async def test_torch_out_of_memory_splits_the_batch_and_still_delivers(demo_model: LoadedModel) -> None:
    model = OomAboveOne(demo_model.pipelines["text-to-image"], family="sd15", device="cpu")
    batcher = Batcher(model, max_batch=8, window_s=0.0)
    service = GpuService(gpu_config(), None, model=demo_model)
    key, works = await service.admit(request(n=4))
    outcome = await batcher.submit(key, works, lambda f: None)
    assert sorted(outcome.images) == [0, 1, 2, 3]
    assert batcher.stats.oom_splits == 3  # 4 -> 2 + 2 -> 1 + 1 + 1 + 1
    assert batcher.stats.pipeline_calls == 4
    reference = await generate(service, request(n=4))
    for index, data in outcome.images.items():
        assert abs(pixels(data) - pixels(reference[index])).max() <= PIXEL_TOLERANCE
    await batcher.aclose()
    await service.aclose()


async def test_sdxl_demo_model_serves_every_operation(tmp_path: Path) -> None:
    path = make_demo_model(tmp_path / "xl", family="sdxl")
    assert detect_family(path) == "sdxl"
    model = load_model(path, gpu_config())
    assert model.operations == {"text-to-image", "image-to-image", "inpaint"}
    assert model.zeroes_empty_negative
    service = GpuService(gpu_config(), None, model=model)
    key, works = await service.admit(request(operation="inpaint", strength=0.9, **inputs()))
    steps: list[tuple[int, int]] = []
    images = model.run(Batch(key, works), lambda done, total: steps.append((done, total)))
    assert size_of(images[0]) == (64, 64)
    assert steps[-1][0] == steps[-1][1]


# KDPM2 schedulers call numpy in a way numpy 2 deprecates; the warning is numpy's own, so the
# project-wide "ignore diffusers deprecations" rule does not match it.
@pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")
@pytest.mark.parametrize("sampler", sorted(SUPPORTED_SAMPLERS))
async def test_every_supported_sampler_runs(demo_model: LoadedModel, sampler: str) -> None:
    key, _ = await GpuService(gpu_config(), None, model=demo_model).admit(request(sampler=sampler))
    work = ImageWork(prompt="x", negative_prompt=None, seed=3, output_format="jpeg")
    (image,) = demo_model.run(Batch(key, [work]), lambda done, total: None)
    assert image[:2] == b"\xff\xd8"  # a JPEG


class RecordingModel(LoadedModel):
    """Remembers the batch size of each pipeline call."""

    calls: list[int]

    def call_pipeline(self, pipe: Any, kwargs: dict[str, Any]) -> Any:
        self.calls.append(len(kwargs["prompt"]))
        return super().call_pipeline(pipe, kwargs)


async def test_padding_batches_for_compiled_graphs_leaves_the_images_unchanged(demo_model: LoadedModel) -> None:
    padded = RecordingModel(demo_model.pipelines["text-to-image"], family="sd15", device="cpu")
    padded.calls = []
    padded.pad_batches = True  # what compile=True turns on; compiling itself only pays on a GPU
    key, works = await GpuService(gpu_config(), None, model=demo_model).admit(request(n=3))
    images = padded.run(Batch(key, works), lambda done, total: None)
    plain = demo_model.run(Batch(key, works), lambda done, total: None)
    assert padded.calls == [4]  # 3 images padded to the next declared batch size (1, 2, 4, 8)
    assert len(images) == 3
    for mine, reference in zip(images, plain, strict=True):
        assert abs(pixels(mine) - pixels(reference)).max() <= PIXEL_TOLERANCE


class KwargsRecorder(LoadedModel):
    """Remembers the arguments of the last pipeline call."""

    last: dict[str, Any]

    def call_pipeline(self, pipe: Any, kwargs: dict[str, Any]) -> Any:
        self.last = kwargs
        return super().call_pipeline(pipe, kwargs)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
async def test_the_separate_decode_stage_gives_the_pipelines_own_images(
    tmp_path: Path, demo_model_path: Path, family: str
) -> None:
    import numpy as np
    import torch
    from diffusers import DiffusionPipeline

    path = demo_model_path if family == "sd15" else make_demo_model(tmp_path / "xl", family="sdxl")
    base = DiffusionPipeline.from_pretrained(path, local_files_only=True)
    model = KwargsRecorder(base, family="sdxl" if family == "sdxl" else "sd15", device="cpu")
    key, works = await GpuService(gpu_config(), None, model=model).admit(request(n=2, negative_prompt="blurry"))
    ours = model.decode(model.denoise(Batch(key, works), lambda done, total: None))
    generators = [torch.Generator("cpu").manual_seed(w.seed) for w in works]
    theirs = base(**{**model.last, "generator": generators, "output_type": "pil", "callback_on_step_end": None}).images
    assert [np.asarray(image).tolist() for image in ours] == [np.asarray(image).tolist() for image in theirs]


class ThreadRecorder(LoadedModel):
    """Remembers which thread ran each pipeline call and each decode."""

    denoise_threads: list[str]
    decode_threads: list[str]

    def call_pipeline(self, pipe: Any, kwargs: dict[str, Any]) -> Any:
        import threading

        self.denoise_threads.append(threading.current_thread().name)
        return super().call_pipeline(pipe, kwargs)

    def decode(self, denoised: Any) -> list[Any]:
        import threading

        self.decode_threads.append(threading.current_thread().name)
        return super().decode(denoised)


async def test_every_batch_of_the_service_runs_on_its_one_gpu_thread(demo_model: LoadedModel) -> None:
    model = ThreadRecorder(demo_model.pipelines["text-to-image"], family="sd15", device="cpu")
    model.denoise_threads, model.decode_threads = [], []
    service = GpuService(gpu_config(max_batch=1, batch_window_ms=0.0), None, model=model)
    requests = [request(seed=s, steps=2) for s in range(3)]
    requests.append(request(operation="image-to-image", strength=0.5, steps=2, **inputs()))
    await asyncio.gather(*(generate(service, r) for r in requests))
    assert len(model.denoise_threads) == 4
    assert set(model.denoise_threads) == {model.denoise_threads[0]}
    assert model.denoise_threads[0].startswith("gpu_")
    assert set(model.decode_threads) == {model.decode_threads[0]} != set(model.denoise_threads)
    await service.aclose()
