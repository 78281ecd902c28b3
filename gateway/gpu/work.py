"""The units of work the batcher groups and the runner executes (plain data, no torch).

A request for n images becomes n `ImageWork`s sharing one `BatchKey`; any works with equal
keys can run in one denoising loop, whichever requests they came from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from gateway.domain.generation import Operation, OutputFormat, Sampler

if TYPE_CHECKING:
    from PIL.Image import Image


class DeviceOutOfMemory(Exception):
    """The device ran out of memory for this batch; a smaller batch may fit."""


@dataclass(frozen=True, slots=True)
class BatchKey:
    """What must be equal for images to share one pipeline call.

    Latent size, step count, scheduler and (for image-to-image) strength fix the shape and the
    timesteps of the loop. The stock pipelines take one guidance scale per call, and whether
    classifier-free guidance runs at all (scale > 1) changes the UNet batch, so it is part of
    the key too. `zero_negative` separates SDXL requests without a negative prompt, whose
    negative embedding is zeros rather than the encoding of "" (mixing them would make an
    image depend on its batch neighbours).
    """

    operation: Operation
    width: int
    height: int
    steps: int
    sampler: Sampler
    guidance_scale: float
    strength: float | None
    zero_negative: bool


@dataclass(frozen=True, slots=True)
class ImageWork:
    """One image to make: its own prompt, negative prompt and seed (request seed + index)."""

    prompt: str
    negative_prompt: str | None
    seed: int
    output_format: OutputFormat
    image: Image | None = None  # init image, already resized to the key's width x height
    mask: Image | None = None  # white = repaint, same size


@dataclass(frozen=True, slots=True)
class Batch:
    """Works that share one key, run in one pipeline call."""

    key: BatchKey
    works: Sequence[ImageWork]


StepCallback = Callable[[int, int], None]
"""Called from the worker thread after each denoising step with (steps done, steps total)."""


class Runner(Protocol):
    """Runs batches in stages; the batcher calls each stage on its own thread.

    `denoise` runs on the one GPU thread (CUDA graphs and their memory pools belong to the thread
    that recorded them), `decode` on a second thread so the next batch's denoising starts at once,
    and `encode` on the CPU pool, one call per image.
    """

    def denoise(self, batch: Batch, on_step: StepCallback) -> Any:
        """The batch's latents (opaque to the batcher); raises `DeviceOutOfMemory`."""
        ...

    def decode(self, denoised: Any) -> list[Any]:
        """The images of a denoised batch, in order; raises `DeviceOutOfMemory`."""
        ...

    def encode(self, image: Any, output_format: OutputFormat) -> bytes:
        """One image's file bytes."""
        ...

    def is_fatal(self, exc: BaseException) -> bool:
        """Whether `exc` leaves the device unusable (a CUDA error other than out-of-memory)."""
        ...
