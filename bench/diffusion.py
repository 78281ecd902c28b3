"""Diffusion benchmark: the GPU service against a separate, plain diffusers pipeline.

Two models of the same architecture and the same seeded weights live on the device, never sharing
a tensor:

* diffusers: a pipeline built on its own and moved to the device, as diffusers' documentation
  shows it (no channels_last, no compile, no batcher). One call makes `batch` images.
* service: the whole service path (DiffusionEngine -> in-process HTTP -> batcher -> GPU thread ->
  decode thread -> encoding) on a model loaded the way the service loads it (channels_last,
  optionally compiled for the declared shapes, warmed before anything is timed). Load is
  closed-loop: 2 x batch clients each send one-image requests, so the batcher forms full
  batches and decode and encoding overlap the next batch's denoising.

Each row (operation, batch size, mode) is warmed with one untimed round at its shape, then timed
--repeats times over --images images; the table shows the median images/s, every repeat, the
p50 latency per call (diffusers) or per request (service), the GPU's mean utilisation over the
timed repeats (NVML, where available) and the peak device memory of the row.

    .venv/bin/python -m bench.diffusion                                   # tiny SD1.5 on the CPU
    python3 -m bench.diffusion --arch sd15 --out $OUT                     # GPU: see bench/gpu-run.sh
    python3 -m bench.diffusion --arch sdxl --batch-sizes 1,2,4 --out $OUT
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import io
import json
import math
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting, DiffusionPipeline
from PIL import Image

from gateway.config import EngineConfig, GpuConfig
from gateway.domain.generation import EngineRequest, ImageInput, Operation
from gateway.engines.diffusion import DiffusionEngine, in_process_client
from gateway.gpu.architectures import ARCHS, Arch, build_random_pipeline
from gateway.gpu.pipelines import Family, LoadedModel, load_model, prepare_pipeline, resolve_device, resolve_dtype
from gateway.gpu.server import create_gpu_app
from gateway.gpu.service import GpuService

PROMPTS = ["a lighthouse at dusk", "a red fox in snow", "an isometric city", "a bowl of ramen", "a sailing ship"]
OPERATIONS: tuple[Operation, ...] = ("text-to-image", "image-to-image", "inpaint")


@dataclass
class Row:
    operation: str
    batch: int
    mode: str
    images_per_s: list[float] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    gpu_util: float | None = None
    peak_gib: float | None = None
    skipped: str | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.images_per_s) if self.images_per_s else 0.0

    def cells(self, baseline: Row | None) -> list[str]:
        if self.skipped:
            return [self.operation, str(self.batch), self.mode, self.skipped, "", "", "", "", ""]
        p50 = statistics.median(self.latencies_s) * 1000 if self.latencies_s else 0.0
        speedup = (
            f"x{self.median / baseline.median:.2f}" if baseline and baseline.median and baseline is not self else ""
        )
        return [
            self.operation,
            str(self.batch),
            self.mode,
            f"{self.median:.2f}",
            " / ".join(f"{v:.2f}" for v in self.images_per_s),
            speedup,
            f"{p50:.0f}",
            "n/a" if self.gpu_util is None else f"{self.gpu_util:.0f}",
            "n/a" if self.peak_gib is None else f"{self.peak_gib:.1f}",
        ]


HEADER = ["operation", "batch", "mode", "images/s", "repeats", "vs diffusers", "p50 ms", "GPU util %", "peak GiB"]


class Utilisation:
    """Mean NVML GPU utilisation while active (a sampling thread at 20 Hz); None without NVML or a GPU."""

    def __init__(self) -> None:
        self._handle: Any = None
        self._nvml: Any = None
        if torch.cuda.is_available():
            try:
                # nvidia-ml-py: optional, on GPU machines only (imported by name: no stubs needed).
                pynvml = importlib.import_module("pynvml")
                pynvml.nvmlInit()
                self._nvml = pynvml
                self._handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
            except Exception as exc:
                print(f"(no GPU utilisation: {exc})", file=sys.stderr)
        self._samples: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._handle is None:
            return
        self._stop.clear()

        def sample() -> None:
            while not self._stop.wait(0.05):
                self._samples.append(int(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu))

        self._thread = threading.Thread(target=sample, name="nvml", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def mean_and_reset(self) -> float | None:
        samples, self._samples = self._samples, []
        return statistics.fmean(samples) if samples else None


def input_images(size: int) -> tuple[Image.Image, Image.Image]:
    """A gradient init image and a mask that repaints the right half."""
    image = Image.linear_gradient("L").resize((size, size)).convert("RGB")
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (size // 2, 0, size, size))
    return image, mask


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# -- the two models ---------------------------------------------------------------------------


def build_baseline(args: argparse.Namespace, device: str, dtype: torch.dtype) -> dict[Operation, Any]:
    """Plain diffusers on the device: its own weights, no channels_last, no compile."""
    if args.model:
        extra = {"add_watermarker": False} if args.arch.endswith("sdxl") else {"requires_safety_checker": False}
        base = DiffusionPipeline.from_pretrained(args.model, local_files_only=True, dtype=dtype, **extra)
    else:
        base = build_random_pipeline(cast(Arch, args.arch), seed=0, device=device, dtype=dtype)
    base.to(device)
    base.set_progress_bar_config(disable=True)
    pipes: dict[Operation, Any] = {
        "text-to-image": base,
        "image-to-image": AutoPipelineForImage2Image.from_pipe(base),
        "inpaint": AutoPipelineForInpainting.from_pipe(base),
    }
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
    return pipes


def build_service_model(args: argparse.Namespace, config: GpuConfig) -> LoadedModel:
    """The model the way the service loads it (a folder through load_model, else seeded random weights)."""
    if args.model:
        return load_model(args.model, config)
    device = resolve_device(config.device)
    pipe = build_random_pipeline(
        cast(Arch, args.arch), seed=0, device=device, dtype=resolve_dtype(config.dtype, device)
    )
    prepare_pipeline(pipe, device=device, memory_fraction=config.memory_fraction)
    family: Family = "sdxl" if args.arch.endswith("sdxl") else "sd15"
    return LoadedModel(pipe, family=family, device=device, config=config)


def shared_tensors(baseline: dict[Operation, Any], model: LoadedModel) -> int:
    """How many parameter or buffer storages the baseline shares with the service's model (should be 0)."""

    def storages(modules: Sequence[Any]) -> set[int]:
        tensors = [t for m in modules for t in (*m.parameters(), *m.buffers()) if t.numel()]
        return {t.untyped_storage().data_ptr() for t in tensors}

    def modules(pipes: Sequence[Any]) -> list[Any]:
        return [c for pipe in pipes for c in pipe.components.values() if isinstance(c, torch.nn.Module)]

    ours = storages(modules(list(baseline.values())))
    theirs = storages([*modules(list(model.pipelines.values())), model.decode_vae])
    return len(ours & theirs)


# -- one round of each mode -------------------------------------------------------------------


def pipeline_kwargs(
    operation: Operation, prompts: list[str], seeds: list[int], args: argparse.Namespace
) -> dict[str, Any]:
    image, mask = input_images(args.size)
    kwargs: dict[str, Any] = {
        "prompt": prompts,
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance,
        "generator": [torch.Generator("cpu").manual_seed(s) for s in seeds],
        "output_type": "pil",
    }
    if operation != "image-to-image":
        kwargs.update(width=args.size, height=args.size)
    if operation != "text-to-image":
        kwargs.update(image=[image] * len(prompts), strength=args.strength)
    if operation == "inpaint":
        kwargs["mask_image"] = [mask] * len(prompts)
    return kwargs


async def diffusers_round(
    pipes: dict[Operation, Any], operation: Operation, batch: int, images: int, args: argparse.Namespace
) -> tuple[float, list[float]]:
    """`images` images in calls of `batch`, one call after another; wall time and per-call latencies."""
    pipe = pipes[operation]
    latencies: list[float] = []

    def call(index: int) -> None:
        prompts = [PROMPTS[(index + k) % len(PROMPTS)] for k in range(batch)]
        started = time.perf_counter()
        with torch.inference_mode():
            pipe(**pipeline_kwargs(operation, prompts, [1000 + index + k for k in range(batch)], args))
        latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    for index in range(0, images, batch):
        await asyncio.to_thread(call, index)
    return time.perf_counter() - started, latencies


def engine_request(operation: Operation, index: int, args: argparse.Namespace) -> EngineRequest:
    image, mask = input_images(args.size)
    extra: dict[str, Any] = {}
    if operation != "text-to-image":
        extra["image"] = ImageInput(data=png(image), media_type="image/png", width=args.size, height=args.size)
        extra["strength"] = args.strength
    if operation == "inpaint":
        extra["mask"] = ImageInput(data=png(mask), media_type="image/png", width=args.size, height=args.size)
    return EngineRequest(
        job_id=f"bench-{index}",
        operation=operation,
        prompt=PROMPTS[index % len(PROMPTS)],
        width=args.size,
        height=args.size,
        steps=args.steps,
        guidance_scale=args.guidance,
        seed=1000 + index,
        n=1,
        **extra,
    )


async def closed_loop(
    requests: int, concurrency: int, one: Callable[[int], Awaitable[None]]
) -> tuple[float, list[float]]:
    """`requests` calls of `one` from `concurrency` clients; wall time and latencies."""
    counter = iter(range(requests))
    latencies: list[float] = []

    async def client() -> None:
        for i in counter:
            started = time.perf_counter()
            await one(i)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies


async def service_round(
    engine: DiffusionEngine,
    service: GpuService,
    operation: Operation,
    batch: int,
    images: int,
    args: argparse.Namespace,
) -> tuple[float, list[float]]:
    assert service.batcher is not None
    service.batcher.max_batch = batch

    async def one(i: int) -> None:
        result = await engine.generate(engine_request(operation, i, args), lambda fraction: None)
        assert len(result.images) == 1

    return await closed_loop(images, 2 * batch, one)


# -- the table --------------------------------------------------------------------------------


def markdown(rows: list[Row], header_lines: list[str]) -> str:
    baselines = {(r.operation, r.batch): r for r in rows if r.mode == "diffusers" and not r.skipped}
    table = [HEADER, *(r.cells(baselines.get((r.operation, r.batch))) for r in rows)]
    widths = [max(len(line[c]) for line in table) for c in range(len(HEADER))]
    out = [*header_lines, ""]
    for i, line in enumerate(table):
        out.append("| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) + " |")
        if i == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    out += ["", *ascii_chart(rows)]
    return "\n".join(out) + "\n"


def sweep(rows: list[Row]) -> dict[str, list[tuple[int, float]]]:
    """text-to-image images/s by batch size, per mode."""
    lines: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        if row.operation == "text-to-image" and not row.skipped:
            lines.setdefault(row.mode, []).append((row.batch, row.median))
    return lines


def ascii_chart(rows: list[Row]) -> list[str]:
    lines = sweep(rows)
    top = max((v for points in lines.values() for _, v in points), default=0.0)
    if not top:
        return []
    out = ["text-to-image images/s by batch size:", "```"]
    for mode, points in lines.items():
        for batch, value in points:
            out.append(f"{mode:>9} b={batch:<3} {'#' * max(1, round(40 * value / top)):<40} {value:.2f}")
    return [*out, "```"]


def write_chart(rows: list[Row], path: Path, title: str) -> bool:
    """images/s against batch size (PNG), if matplotlib is installed."""
    try:
        matplotlib = importlib.import_module("matplotlib")  # optional: the chart only
        matplotlib.use("Agg")
        plt = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return False
    figure, axes = plt.subplots(figsize=(6, 4))
    for mode, points in sweep(rows).items():
        axes.plot([b for b, _ in points], [v for _, v in points], marker="o", label=mode)
    axes.set_xscale("log", base=2)
    axes.set_xlabel("batch size (images)")
    axes.set_ylabel("images/s (median of repeats)")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--arch", choices=ARCHS, default="tiny-sd15", help="seeded random weights of this layout")
    parser.add_argument("--model", help="a local diffusers folder instead of random weights (--arch names its family)")
    parser.add_argument("--size", type=int, help="image side in pixels (default: 64 tiny, 512 sd15, 1024 sdxl)")
    parser.add_argument("--steps", type=int, help="denoising steps (default: 4 tiny, 30 full size)")
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--strength", type=float, default=0.75, help="image-to-image and inpaint")
    parser.add_argument("--batch-sizes", default="1,2,4,8", help="the text-to-image sweep (and the chart)")
    parser.add_argument("--ops", default=",".join(OPERATIONS), help="operations to measure")
    parser.add_argument(
        "--op-batch", type=int, help="batch size of image-to-image and inpaint rows (default: the largest)"
    )
    parser.add_argument("--images", type=int, default=8, help="images per timed repeat (at least one batch)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", default="diffusers,service")
    parser.add_argument("--window-ms", type=float, default=10.0)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto")
    parser.add_argument("--compile", action="store_true", help="compile the service's model for the swept shapes")
    parser.add_argument(
        "--compile-mode",
        default="max-autotune",
        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
    )
    parser.add_argument("--compile-backend", default="inductor", choices=["inductor", "aot_eager", "eager"])
    parser.add_argument(
        "--compile-cache", help="inductor/Triton cache folder (default: OUT/compile-cache or a temp dir)"
    )
    parser.add_argument("--out", help="folder for NAME.md, NAME.json and NAME.png (the chart)")
    parser.add_argument(
        "--budget-s", type=float, default=0.0, help="start no new row after this many seconds (0: none)"
    )
    args = parser.parse_args(argv)
    tiny = args.arch.startswith("tiny")
    args.size = args.size or (64 if tiny else 1024 if args.arch == "sdxl" else 512)
    args.steps = args.steps or (4 if tiny else 30)
    args.batch_sizes = sorted({int(b) for b in args.batch_sizes.split(",")})
    args.op_batch = args.op_batch or args.batch_sizes[-1]
    args.ops = [op for op in args.ops.split(",") if op]
    args.modes = [m for m in args.modes.split(",") if m]
    for op in args.ops:
        if op not in OPERATIONS:
            parser.error(f"--ops: unknown operation {op}")
    return args


def plan(args: argparse.Namespace) -> list[tuple[Operation, int, str]]:
    rows: list[tuple[Operation, int, str]] = []
    for op in args.ops:
        for batch in args.batch_sizes if op == "text-to-image" else [args.op_batch]:
            rows += [(op, batch, mode) for mode in args.modes]
    return rows


def service_config(args: argparse.Namespace) -> GpuConfig:
    """The service's [gpu] settings for this run: the swept sizes are the declared (compiled) shapes."""
    batch_sizes = sorted({*args.batch_sizes, args.op_batch})
    cache = args.compile_cache or (str(Path(args.out) / "compile-cache") if args.out else None)
    return GpuConfig(
        device=args.device,
        dtype=args.dtype,
        compile=args.compile,
        compile_mode=args.compile_mode,
        compile_backend=args.compile_backend,
        compile_cache_dir=cache,
        resolutions=(f"{args.size}x{args.size}",),
        batch_sizes=tuple(batch_sizes),
        compile_guidance="with" if args.guidance > 1 else "without",  # only what the rows use: a shorter warm-up
        max_batch=batch_sizes[-1],
        batch_window_ms=args.window_ms,
    )


async def run(args: argparse.Namespace) -> list[Row]:
    started = time.monotonic()
    out = Path(args.out) if args.out else None
    name = f"{args.arch}-{args.size}{'-compiled' if args.compile else ''}"
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    config = service_config(args)
    baseline = build_baseline(args, device, dtype) if "diffusers" in args.modes else None
    model = build_service_model(args, config)
    if baseline is not None:
        assert shared_tensors(baseline, model) == 0, "the baseline must not share the service's weights"
    service = GpuService(config, None, model=model)
    warm_started = time.perf_counter()
    await service.start()  # with --compile: every swept shape compiled and run before any timing
    warm_s = time.perf_counter() - warm_started
    engine = DiffusionEngine(
        "bench",
        EngineConfig(kind="diffusion", timeout_s=3600, request_timeout_s=3600),
        in_process_client(create_gpu_app(config, None, service=service)),
    )
    gpu_name = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or platform.machine()
    header = [
        f"## {name}: {args.size}x{args.size}, {args.steps} steps, guidance {args.guidance:g}, "
        f"strength {args.strength:g}",
        "",
        f"{gpu_name}, {os.cpu_count()} CPUs; torch {torch.__version__}, {dtype}; service compile: "
        f"{f'{args.compile_mode} ({args.compile_backend}), warm-up {warm_s:.0f} s' if args.compile else 'off'}; "
        f"{args.images}+ images per repeat (whole batches), median of {args.repeats}; "
        f"service clients = 2 x batch, window {args.window_ms:g} ms",
    ]
    util = Utilisation()
    rows: list[Row] = []
    for operation, batch, mode in plan(args):
        row = Row(operation, batch, mode)
        rows.append(row)
        if args.budget_s and time.monotonic() - started > args.budget_s:
            row.skipped = "skipped (budget)"
            continue
        images = math.ceil(max(args.images, batch) / batch) * batch

        async def one_round(
            operation: Operation = operation, batch: int = batch, mode: str = mode, count: int = images
        ) -> tuple[float, list[float]]:
            if mode == "diffusers":
                assert baseline is not None
                return await diffusers_round(baseline, operation, batch, count, args)
            return await service_round(engine, service, operation, batch, count, args)

        await one_round(count=2 * batch if mode == "service" else batch)  # warm this shape, untimed
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        util.start()
        for _ in range(args.repeats):
            seconds, latencies = await one_round()
            row.images_per_s.append(images / seconds)
            row.latencies_s += latencies
        util.stop()
        row.gpu_util = util.mean_and_reset()
        if device.startswith("cuda"):
            row.peak_gib = torch.cuda.max_memory_allocated() / 2**30
        print(" | ".join(row.cells(None)), flush=True)
        if out:
            save(out, name, rows, header)
    await engine.aclose()
    await service.aclose()
    print("\n" + markdown(rows, header))
    if out:
        save(out, name, rows, header)
    return rows


def save(out: Path, name: str, rows: list[Row], header: list[str]) -> None:
    """Written after every row, so a run stopped at its time limit still leaves its numbers."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(markdown(rows, header))
    (out / f"{name}.json").write_text(json.dumps([asdict(r) for r in rows], indent=1))
    write_chart(rows, out / f"{name}.png", name)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.images < 1 or args.repeats < 1 or args.batch_sizes[0] < 1:
        print("--images, --repeats and batch sizes must be positive", file=sys.stderr)
        return 2
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
