"""Loading a local diffusers model and running batches of images on it.

One loaded model serves text-to-image, image-to-image and inpaint: the derived pipelines are
made with `from_pipe`, so they share the UNet, VAE and text encoders (one copy in memory).

Samplers map to schedulers as gateway/gpu/samplers.py documents.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import diffusers
import torch
from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting, DiffusionPipeline
from PIL import Image

from gateway.config import GpuConfig, parse_resolution
from gateway.domain.generation import OPERATIONS, Operation, OutputFormat, Sampler
from gateway.gpu.compiled import ShapeGate, allow_recompiles, compile_gates, is_device_fault, use_compile_cache
from gateway.gpu.images import encode_output
from gateway.gpu.samplers import SCHEDULERS
from gateway.gpu.work import Batch, BatchKey, DeviceOutOfMemory, ImageWork, StepCallback

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


@dataclass(frozen=True, slots=True)
class WarmShape:
    """One declared shape to compile and run before the service reports ready."""

    width: int
    height: int
    batch: int
    guidance: bool  # classifier-free guidance doubles the UNet batch


@dataclass(frozen=True, slots=True)
class Denoised:
    """A batch's final latents (padding already dropped) and the event that marks them computed."""

    latents: Any
    event: Any = None  # a torch.cuda.Event on CUDA: the decode stream waits on it, not the host


class LoadedModel:
    """A model on its device, able to run a `Batch` of any supported operation (the batcher's Runner).

    A batch runs in stages on different threads: `denoise` (text encoding and the UNet loop, on
    the one GPU thread) hands latents to `decode` (the VAE decoder on its own thread and CUDA
    stream, with its own copy of the VAE: the image-to-image pipelines switch the shared VAE's
    dtype while encoding), and `encode` turns each image into PNG/JPEG/WebP bytes on any thread.
    """

    def __init__(
        self,
        base: Any,
        *,
        family: Family,
        device: str,
        config: GpuConfig | None = None,
        compiler: Callable[..., Any] = torch.compile,
    ) -> None:
        config = config or GpuConfig(device="cpu" if device == "cpu" else "cuda")
        self.family: Family = family
        self.device = device
        self.config = config
        self.dtype = str(base.unet.dtype).removeprefix("torch.")
        # With torch.compile each batch size is its own graph: batches are padded up to the next
        # declared size, so only declared shapes reach the UNet.
        self.pad_batches = config.compile
        self.batch_sizes = tuple(sorted(set(config.batch_sizes)))
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
        self._image_processor = base.image_processor
        self.decode_vae = copy.deepcopy(base.vae)
        if self.decode_vae.dtype == torch.float16 and self.decode_vae.config.force_upcast:
            # What the pipelines do around each decode (fp16 overflows in this VAE), done once.
            self.decode_vae.to(dtype=torch.float32)
        self._decode_stream: Any = None
        scale = 2 ** (len(base.vae.config.block_out_channels) - 1)
        sample = base.unet.config.sample_size
        side = sample if isinstance(sample, int) else sample[0]
        self.native_size = (int(side) * scale, int(side) * scale)
        self.gates: tuple[ShapeGate, ShapeGate] | None = None
        if config.compile:
            if config.compile_cache_dir:
                use_compile_cache(config.compile_cache_dir)
            shapes = self.warm_shapes()
            allow_recompiles(2 * len(shapes) + 8)
            self.gates = compile_gates(
                base.unet,
                self.decode_vae.decoder,
                mode=config.compile_mode,
                backend=config.compile_backend,
                compiler=compiler,
            )

    @property
    def operations(self) -> frozenset[Operation]:
        """The operations this model can serve."""
        return frozenset(op for op in OPERATIONS if op in self.pipelines)

    @property
    def zeroes_empty_negative(self) -> bool:
        """SDXL uses a zero negative embedding when no negative prompt is given."""
        return bool(self._base.config.get("force_zeros_for_empty_prompt", False))

    def padded_size(self, n: int) -> int:
        """The batch size `n` images run at: the next declared size when compiled, else `n`."""
        if not self.pad_batches:
            return n
        return next((size for size in self.batch_sizes if size >= n), n)

    def batch_limit(self, width: int, height: int) -> int:
        """Most images per batch at this size: [gpu] limits, then down to a declared size when compiled."""
        limit = self.config.batch_limit(width, height)
        if self.pad_batches:
            declared = [size for size in self.batch_sizes if size <= limit]
            if declared:
                return declared[-1]
        return limit

    # -- the stages -----------------------------------------------------------------------------

    def denoise(self, batch: Batch, on_step: StepCallback) -> Denoised:
        """Encode the prompts and run the denoising loop; the latents stay on the device."""
        key = batch.key
        pipe = self.pipelines[key.operation]
        works = list(batch.works)
        works += [works[-1]] * (self.padded_size(len(works)) - len(works))
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
            "output_type": "latent",
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
                latents = self.call_pipeline(pipe, kwargs)[: len(batch.works)]
        except torch.OutOfMemoryError as exc:
            self._release_cache()
            raise DeviceOutOfMemory(f"out of device memory at batch {len(works)}") from exc
        event = None
        if self.device.startswith("cuda"):
            event = torch.cuda.Event()
            event.record()
        return Denoised(latents, event)

    def call_pipeline(self, pipe: Any, kwargs: dict[str, Any]) -> Any:
        """Call a diffusers pipeline; its output (latents here). The one seam tests use to inject faults."""
        return pipe(**kwargs).images

    def decode(self, denoised: Denoised) -> list[Any]:
        """The VAE decoder, on its own CUDA stream: PIL images in batch order."""
        with torch.inference_mode():
            if not self.device.startswith("cuda"):
                return self._decode_split(denoised.latents)
            if self._decode_stream is None:
                self._decode_stream = torch.cuda.Stream()
            stream = self._decode_stream
            with torch.cuda.stream(stream):
                if denoised.event is not None:
                    stream.wait_event(denoised.event)
                # The UNet thread's allocator must not hand this memory out while this stream reads it.
                denoised.latents.record_stream(stream)
                return self._decode_split(denoised.latents)

    def _decode_split(self, latents: Any) -> list[Any]:
        try:
            return self._decode_tensor(latents)
        except torch.OutOfMemoryError as exc:
            self._release_cache()
            if latents.shape[0] == 1:
                raise DeviceOutOfMemory("out of device memory decoding one image") from exc
            half = latents.shape[0] // 2
            log.warning("out of device memory decoding %d images; decoding in halves", latents.shape[0])
            return self._decode_split(latents[:half]) + self._decode_split(latents[half:])

    def _decode_tensor(self, latents: Any) -> list[Any]:
        # As the SD and SDXL pipelines decode when output_type is not "latent".
        vae = self.decode_vae
        latents = latents.to(vae.dtype)
        mean = getattr(vae.config, "latents_mean", None)
        std = getattr(vae.config, "latents_std", None)
        if mean is not None and std is not None:
            mean_t = torch.tensor(mean).view(1, -1, 1, 1).to(latents.device, latents.dtype)
            std_t = torch.tensor(std).view(1, -1, 1, 1).to(latents.device, latents.dtype)
            latents = latents * std_t / vae.config.scaling_factor + mean_t
        else:
            latents = latents / vae.config.scaling_factor
        image = vae.decode(latents, return_dict=False)[0]
        return list(self._image_processor.postprocess(image, output_type="pil"))

    def encode(self, image: Any, output_format: OutputFormat) -> bytes:
        """PNG, JPEG or WebP bytes (CPU only; called off the GPU threads)."""
        return encode_output(image, output_format)

    def is_fatal(self, exc: BaseException) -> bool:
        """A device fault (a CUDA error other than out-of-memory): the service must be restarted."""
        return is_device_fault(exc)

    def run(self, batch: Batch, on_step: StepCallback) -> list[bytes]:
        """All stages in the calling thread: the encoded images in order (tests, one-off calls)."""
        images = self.decode(self.denoise(batch, on_step))
        return [self.encode(image, work.output_format) for image, work in zip(images, batch.works, strict=True)]

    def _release_cache(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    # -- warm-up --------------------------------------------------------------------------------

    def warm_shapes(self) -> list[WarmShape]:
        """The declared shapes, smallest batch first; without guidance only where the UNet batch is new
        (a batch of 2 without guidance is the UNet batch of 1 image with it)."""
        resolutions = [parse_resolution(r) for r in self.config.resolutions] or [self.native_size]
        shapes: list[WarmShape] = []
        guidance = self.config.compile_guidance
        for width, height in dict.fromkeys(resolutions):
            limit = self.config.batch_limit(width, height)
            sizes = [b for b in self.batch_sizes if b <= limit]
            with_guidance = {2 * b for b in sizes} if guidance != "without" else set()
            for b in sizes:
                if guidance != "without":
                    shapes.append(WarmShape(width, height, b, True))
                if guidance != "with" and b not in with_guidance:
                    shapes.append(WarmShape(width, height, b, False))
        return sorted(shapes, key=lambda s: (s.width, s.height, s.batch, not s.guidance))

    def warm_denoise(self, shape: WarmShape) -> Denoised:
        """Compile and run the UNet at `shape` (a few steps: enough for CUDA graphs to be recorded)."""
        operation: Operation = "text-to-image" if "text-to-image" in self.pipelines else "inpaint"
        key = BatchKey(
            operation=operation,
            width=shape.width,
            height=shape.height,
            steps=3,
            sampler="euler",
            guidance_scale=7.5 if shape.guidance else 1.0,
            strength=None if operation == "text-to-image" else 1.0,
            zero_negative=False,
        )
        image = mask = None
        if operation == "inpaint":
            image = Image.new("RGB", (shape.width, shape.height), (128, 128, 128))
            mask = Image.new("L", (shape.width, shape.height), 255)
        work = ImageWork("warm-up", None, 0, "png", image=image, mask=mask)
        batch = Batch(key, [work] * shape.batch)
        gate = self.gates[0] if self.gates else None
        if gate is not None:
            gate.warming = True
        try:
            return self.denoise(batch, lambda done, total: None)
        finally:
            if gate is not None:
                gate.warming = False

    def warm_decode(self, shape: WarmShape, denoised: Denoised) -> None:
        """Compile and run the VAE decoder at `shape`, twice (the second run records CUDA graphs)."""
        gate = self.gates[1] if self.gates else None
        if gate is not None:
            gate.warming = True
        try:
            for _ in range(2):
                self.decode(denoised)
        finally:
            if gate is not None:
                gate.warming = False


def prepare_pipeline(base: Any, *, device: str, memory_fraction: float | None = None) -> Any:
    """Move a freshly built or loaded pipeline to `device` with the fast CUDA settings."""
    if device.startswith("cuda") and memory_fraction is not None:
        # Past the cap the caching allocator raises out-of-memory, which splits the batch.
        torch.cuda.set_per_process_memory_fraction(memory_fraction)
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
    prepare_pipeline(base, device=device, memory_fraction=config.memory_fraction)
    log.info("loaded %s model %s on %s (%s)", family, path, device, dtype)
    return LoadedModel(base, family=family, device=device, config=config)
