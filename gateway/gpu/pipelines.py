"""Loading a local diffusers model and running batches of images on it.

One loaded model serves text-to-image, image-to-image and inpaint: the derived pipelines are
made with `from_pipe`, so they share the UNet, VAE and text encoders (one copy in memory).

Samplers map to schedulers as gateway/gpu/samplers.py documents.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

import diffusers
import torch
from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting, DiffusionPipeline

from gateway.config import GpuConfig
from gateway.domain.generation import OPERATIONS, Operation, Sampler
from gateway.gpu.images import encode_output
from gateway.gpu.samplers import SCHEDULERS
from gateway.gpu.work import Batch, DeviceOutOfMemory, StepCallback

log = logging.getLogger(__name__)

Family = Literal["sd15", "sdxl"]


class UnsupportedModel(Exception):
    """The folder is not a Stable Diffusion 1.x/2.x or SDXL diffusers model."""


def detect_family(model_path: Path) -> Family:
    """SD1.5-like or SDXL, from model_index.json (SDXL has a second text encoder)."""
    index_file = Path(model_path) / "model_index.json"
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError) as exc:
        raise UnsupportedModel(f"{index_file}: {exc}") from exc
    class_name = str(index.get("_class_name", ""))
    if not class_name.startswith("StableDiffusion"):
        raise UnsupportedModel(f"{model_path}: pipeline {class_name or '?'} is not Stable Diffusion 1.x/2.x or SDXL")
    return "sdxl" if "XL" in class_name or "text_encoder_2" in index else "sd15"


def resolve_device(device: Literal["auto", "cpu", "cuda"]) -> str:
    """ "auto" picks CUDA when a GPU is visible."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str) -> Any:
    """CPU always runs fp32 (bf16 is several times slower on CPUs without AMX, fp16 is unsupported).

    On CUDA, "auto" is bf16 where supported: it has fp32's range, so the SDXL VAE and large
    activations cannot overflow as they can in fp16, at the same speed on Ampere and later.
    """
    if device == "cpu":
        if dtype not in {"auto", "float32"}:
            log.warning("dtype %s ignored on CPU; running float32", dtype)
        return torch.float32
    if dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return getattr(torch, dtype)


def make_scheduler(sampler: Sampler, base_config: Any) -> Any:
    """A fresh scheduler for one call: schedulers keep per-call state (timesteps, step index)."""
    class_name, extra = SCHEDULERS[sampler]
    return getattr(diffusers, class_name).from_config(base_config, **extra)


def _bucket(size: int, limit: int) -> int:
    bucket = 1
    while bucket < size:
        bucket *= 2
    return max(size, min(bucket, limit))


class LoadedModel:
    """A model on its device, able to run a `Batch` of any supported operation (the batcher's Runner)."""

    def __init__(self, base: Any, *, family: Family, device: str, compile: bool = False, max_batch: int = 8) -> None:
        self.family: Family = family
        self.device = device
        self.dtype = str(base.unet.dtype).removeprefix("torch.")
        # With torch.compile each new batch size is a new graph; padding batches to powers of two
        # bounds the shapes to log2(max_batch) + 1 per resolution.
        self.pad_batches = compile
        self.max_batch = max_batch
        base.set_progress_bar_config(disable=True)
        self._base = base
        self._scheduler_config = base.scheduler.config
        self.pipelines: dict[Operation, Any] = {}
        if base.unet.config.in_channels == 9:
            # A dedicated inpainting checkpoint: its UNet wants the mask and masked image as input.
            self.pipelines["inpaint"] = AutoPipelineForInpainting.from_pipe(base)
        else:
            self.pipelines["text-to-image"] = base
            self.pipelines["image-to-image"] = AutoPipelineForImage2Image.from_pipe(base)
            self.pipelines["inpaint"] = AutoPipelineForInpainting.from_pipe(base)
        for pipe in self.pipelines.values():
            pipe.set_progress_bar_config(disable=True)
        if compile:
            # In place, so every pipeline sharing the UNet runs the compiled forward.
            base.unet.compile(mode="max-autotune", fullgraph=True)

    @property
    def operations(self) -> frozenset[Operation]:
        """The operations this model can serve."""
        return frozenset(op for op in OPERATIONS if op in self.pipelines)

    @property
    def zeroes_empty_negative(self) -> bool:
        """SDXL uses a zero negative embedding when no negative prompt is given."""
        return bool(self._base.config.get("force_zeros_for_empty_prompt", False))

    def run(self, batch: Batch, on_step: StepCallback) -> list[bytes]:
        """Run one pipeline call for every work in `batch`; the encoded images in order."""
        key = batch.key
        pipe = self.pipelines[key.operation]
        works = list(batch.works)
        if self.pad_batches:
            works += [works[-1]] * (_bucket(len(works), self.max_batch) - len(works))
        pipe.scheduler = make_scheduler(key.sampler, self._scheduler_config)

        def step_end(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            on_step(step + 1, int(pipeline.num_timesteps))
            return tensors

        kwargs: dict[str, Any] = {
            "prompt": [w.prompt for w in works],
            "negative_prompt": None if key.zero_negative else [w.negative_prompt or "" for w in works],
            "num_inference_steps": key.steps,
            "guidance_scale": key.guidance_scale,
            # CPU generators: a seed gives the same starting noise on every device and batch position.
            "generator": [torch.Generator("cpu").manual_seed(w.seed) for w in works],
            "output_type": "pil",
            "callback_on_step_end": step_end,
        }
        if key.operation != "image-to-image":
            kwargs.update(width=key.width, height=key.height)
        if key.operation != "text-to-image":
            kwargs.update(image=[w.image for w in works], strength=key.strength)
        if key.operation == "inpaint":
            kwargs["mask_image"] = [w.mask for w in works]
        try:
            with torch.inference_mode():
                images = self.call_pipeline(pipe, kwargs)
        except torch.OutOfMemoryError as exc:
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()
            raise DeviceOutOfMemory(f"out of device memory at batch {len(works)}") from exc
        return [encode_output(image, work.output_format) for image, work in zip(images, batch.works, strict=False)]

    def call_pipeline(self, pipe: Any, kwargs: dict[str, Any]) -> list[Any]:
        """Call a diffusers pipeline; the PIL images. The one seam tests use to inject faults."""
        return list(pipe(**kwargs).images)


def prepare_pipeline(base: Any, *, device: str) -> Any:
    """Move a freshly built or loaded pipeline to `device` with the fast CUDA settings."""
    base.to(device)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        # channels_last is 1.3-2x faster for the UNet's convolutions on tensor cores.
        base.unet.to(memory_format=torch.channels_last)
        base.vae.to(memory_format=torch.channels_last)
    # diffusers already uses torch's scaled_dot_product_attention (flash / memory-efficient
    # kernels) on torch 2, so no attention processor needs setting here.
    return base


def load_model(model_path: str | Path, config: GpuConfig) -> LoadedModel:
    """Load a local diffusers folder (never a hub id) onto the configured device and dtype."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = Path(model_path)
    family = detect_family(path)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    extra: dict[str, Any] = {"add_watermarker": False} if family == "sdxl" else {"requires_safety_checker": False}
    base = DiffusionPipeline.from_pretrained(path, local_files_only=True, dtype=dtype, **extra)
    prepare_pipeline(base, device=device)
    log.info("loaded %s model %s on %s (%s)", family, path, device, dtype)
    return LoadedModel(base, family=family, device=device, compile=config.compile, max_batch=config.max_batch)
