"""The GPU service's logic, independent of HTTP: load the model, validate, queue, drain."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.config import GpuConfig
from gateway.domain.generation import EngineRequest
from gateway.gpu.batcher import Batcher, GpuThreads, JobOutcome, ProgressFn
from gateway.gpu.images import BadInputImage, decode_input
from gateway.gpu.protocol import ServiceStatus
from gateway.gpu.samplers import DEFAULT_SAMPLER, SUPPORTED_SAMPLERS
from gateway.gpu.work import BatchKey, ImageWork

if TYPE_CHECKING:
    from PIL.Image import Image

    from gateway.gpu.pipelines import LoadedModel, WarmShape

log = logging.getLogger(__name__)

DEFAULT_STRENGTH = {"image-to-image": 0.8, "inpaint": 1.0}
MAX_SEED = 2**63 - 1 - 8  # torch seeds are 64-bit; image i uses seed + i


class RequestInvalid(Exception):
    """The request cannot be served as asked (HTTP 422); the message names the field."""


class OperationUnsupported(Exception):
    """The loaded model cannot do this operation (an inpaint-only checkpoint, say); HTTP 501."""


class NotAccepting(Exception):
    """The service is draining or its model failed to load; HTTP 503."""


class GpuService:
    """One model on one device behind a batcher. Thread-free API for the HTTP layer.

    Ready (status "ok") once the model is loaded and, with compile on, every declared shape has
    been compiled and run; "failed" after a device fault, which only a restart clears.
    """

    def __init__(self, config: GpuConfig, model_path: str | Path | None, *, model: LoadedModel | None = None) -> None:
        self.config = config
        path = model_path if model_path is not None else config.model_path
        self.model_path = Path(path) if path is not None else None
        self.model: LoadedModel | None = model
        self.batcher: Batcher | None = None
        self.threads = GpuThreads()
        self.draining = False
        self.fault: str | None = None
        self.warm_done = 0
        self.warm_total = 0
        self._warming = False
        self._active = 0
        self._load_lock = asyncio.Lock()
        self._load_error: str | None = None
        self._limits: dict[tuple[int, int], int] = {}  # lowered where a declared batch did not fit
        if model is not None and model.gates is None:
            self._make_batcher(model)

    @property
    def status(self) -> ServiceStatus:
        """What /v1/health reports; only "ok" is ready."""
        if self.fault is not None:
            return "failed"
        if self.draining:
            return "draining"
        if self.batcher is not None:
            return "ok"
        return "warming" if self._warming else "loading"

    @property
    def detail(self) -> str | None:
        """Why the service is not ready, in words."""
        if self.fault is not None:
            return self.fault
        if self._load_error is not None:
            return self._load_error
        if self._warming:
            return f"compiled {self.warm_done} of {self.warm_total} declared shapes"
        return None

    @property
    def idle(self) -> bool:
        """No request admitted and unfinished."""
        return self._active == 0 and (self.batcher is None or self.batcher.idle)

    def begin_drain(self) -> None:
        """Refuse new work from now on; admitted requests still finish. Safe in a signal handler."""
        self.draining = True

    async def start(self) -> LoadedModel:
        """Load the model once and warm its declared shapes, all on the GPU thread."""
        async with self._load_lock:
            if self.batcher is not None and self.model is not None:
                return self.model
            if self._load_error is not None:
                raise NotAccepting(self._load_error)
            model = self.model if self.model is not None else await self._load()
            self.model = model
            await self._warm_up(model)
            self._make_batcher(model)
            return model

    async def _load(self) -> LoadedModel:
        if self.model_path is None:
            raise NotAccepting("no model configured")
        # Deferred: importing torch and diffusers costs seconds; only a loading service pays it.
        try:
            from gateway.gpu.pipelines import UnsupportedModel, load_model  # noqa: PLC0415
        except ImportError as exc:
            self._load_error = f"the diffusion backend is not installed (pip install 'gateway[gpu]'): {exc}"
            raise NotAccepting(self._load_error) from exc
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.threads.gpu, load_model, self.model_path, self.config)
        except (UnsupportedModel, OSError, ValueError) as exc:
            self._load_error = f"cannot load model {self.model_path}: {exc}"
            log.error("%s", self._load_error)
            raise NotAccepting(self._load_error) from exc

    async def _warm_up(self, model: LoadedModel) -> None:
        """Compile and run every declared shape (UNet on the GPU thread, VAE on the decode thread)."""
        if model.gates is None:
            return
        from gateway.gpu.work import DeviceOutOfMemory  # noqa: PLC0415

        shapes = model.warm_shapes()
        self.warm_total, self.warm_done, self._warming = len(shapes), 0, True
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        too_big: dict[tuple[int, int], int] = {}
        try:
            for shape in shapes:
                size = (shape.width, shape.height)
                if shape.batch >= too_big.get(size, shape.batch + 1):
                    self.warm_done += 1
                    continue
                shape_started = time.perf_counter()
                try:
                    denoised = await loop.run_in_executor(self.threads.gpu, model.warm_denoise, shape)
                    await loop.run_in_executor(self.threads.decode, model.warm_decode, shape, denoised)
                except DeviceOutOfMemory:
                    too_big[size] = shape.batch
                    log.warning(
                        "warm-up: batch %d at %dx%d does not fit in device memory; limit lowered", shape.batch, *size
                    )
                else:
                    log.info("warm-up: %s in %.1f s", _describe(shape), time.perf_counter() - shape_started)
                self.warm_done += 1
        except Exception as exc:
            # Compile errors already fell back to eager inside the gates; what reaches here is a
            # device fault or a bug, and a service that cannot warm up must not wait for traffic.
            kind = "device fault" if model.is_fatal(exc) else "failure"
            self._set_fault(f"{kind} during warm-up: {type(exc).__name__}: {exc}")
            raise NotAccepting(self.fault or kind) from exc
        finally:
            self._warming = False
        for size, batch in too_big.items():
            fitting = [b for b in model.batch_sizes if b < batch]
            self._limits[size] = fitting[-1] if fitting else 1
        log.info("warm-up: %d shapes in %.1f s; the service is ready", len(shapes), time.perf_counter() - started)

    def _set_fault(self, reason: str) -> None:
        if self.fault is None:
            self.fault = reason
            log.critical("GPU service unhealthy: %s", reason)

    def batch_limit(self, key: BatchKey) -> int:
        """The most images per batch at the key's resolution (config, compiled sizes, warm-up findings)."""
        limit = self.model.batch_limit(key.width, key.height) if self.model is not None else self.config.max_batch
        return min(limit, self._limits.get((key.width, key.height), limit))

    def _make_batcher(self, model: LoadedModel) -> None:
        self.batcher = Batcher(
            model,
            max_batch=self.config.max_batch,
            window_s=self.config.batch_window_ms / 1000,
            limit_for=self.batch_limit,
            threads=self.threads,
            on_fault=self._set_fault,
        )

    async def admit(self, request: EngineRequest) -> tuple[BatchKey, list[ImageWork]]:
        """Check and prepare a request: its batch key and one work per image.

        Raises NotAccepting, OperationUnsupported or RequestInvalid; nothing is queued yet.
        """
        if self.draining:
            raise NotAccepting("the service is draining")
        if self.fault is not None:
            raise NotAccepting(f"the service is unhealthy: {self.fault}")
        model = await self.start()
        if request.operation not in model.operations:
            raise OperationUnsupported(f"operation {request.operation} is not supported by the loaded model")
        problem = validate(request)
        if problem is None and request.sampler is not None and request.sampler not in SUPPORTED_SAMPLERS:
            problem = f"sampler: {request.sampler} is not supported"
        if problem is not None:
            raise RequestInvalid(problem)
        strength = None
        if request.operation != "text-to-image":
            strength = request.strength if request.strength is not None else DEFAULT_STRENGTH[request.operation]
            if int(request.steps * strength) < 1:
                raise RequestInvalid("strength: steps x strength must be at least 1 (nothing would be denoised)")
        key = BatchKey(
            operation=request.operation,
            width=request.width,
            height=request.height,
            steps=request.steps,
            sampler=request.sampler or DEFAULT_SAMPLER,
            guidance_scale=float(request.guidance_scale),
            strength=strength,
            zero_negative=not request.negative_prompt and model.zeroes_empty_negative,
        )
        image, mask = await asyncio.to_thread(_decode_inputs, request)
        works = [
            ImageWork(
                prompt=request.prompt,
                negative_prompt=request.negative_prompt,
                seed=request.seed + i,
                output_format=request.output_format,
                image=image,
                mask=mask,
            )
            for i in range(request.n)
        ]
        return key, works

    async def run(self, key: BatchKey, works: list[ImageWork], on_progress: ProgressFn) -> JobOutcome:
        """Queue admitted works and wait for them; counts as active work for draining."""
        assert self.batcher is not None, "admit() loads the model first"
        self._active += 1
        try:
            return await self.batcher.submit(key, works, on_progress)
        finally:
            self._active -= 1

    async def aclose(self) -> None:
        """Stop the batcher (requests still waiting are cancelled)."""
        if self.batcher is not None:
            await self.batcher.aclose()
        self.threads.shutdown()


def validate(request: EngineRequest) -> str | None:
    """Why the service cannot serve `request` (naming the field), or None."""
    for name, side in (("width", request.width), ("height", request.height)):
        if not 64 <= side <= 2048 or side % 8:
            return f"{name}: must be a multiple of 8 between 64 and 2048"
    checks = (
        ("steps", 1 <= request.steps <= 150, "must be between 1 and 150"),
        ("n", 1 <= request.n <= 8, "must be between 1 and 8"),
        ("guidance_scale", 0 <= request.guidance_scale <= 35, "must be between 0 and 35"),
        ("seed", 0 <= request.seed <= MAX_SEED, f"must be between 0 and {MAX_SEED}"),
        ("strength", request.strength is None or 0 < request.strength <= 1, "must be in (0, 1]"),
        ("image", request.operation == "text-to-image" or request.image is not None, "is required"),
        ("mask", request.operation != "inpaint" or request.mask is not None, "is required for inpaint"),
    )
    for name, ok, message in checks:
        if not ok:
            return f"{name}: {message}"
    return None


def _decode_inputs(request: EngineRequest) -> tuple[Image | None, Image | None]:
    """The init image and mask at the request's size; text-to-image ignores any it was sent."""
    if request.operation == "text-to-image":
        return None, None
    size = (request.width, request.height, request.resize_mode)
    decoded: list[Image | None] = []
    for name, given in (("image", request.image), ("mask", request.mask)):
        try:
            decoded.append(decode_input(given.data, *size, mask=name == "mask") if given is not None else None)
        except BadInputImage as exc:
            raise RequestInvalid(f"{name}: {exc}") from exc
    return decoded[0], decoded[1]


def _describe(shape: WarmShape) -> str:
    guidance = "with" if shape.guidance else "without"
    return f"{shape.width}x{shape.height} batch {shape.batch} {guidance} guidance"
