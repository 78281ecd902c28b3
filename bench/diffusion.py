"""Diffusion service benchmark: dynamic batching against one diffusers call per request.

Both modes run the same model in the same process, under the same closed-loop load:
`--concurrency` clients each send their next request as soon as the previous one returns,
until `--requests` are done. The batched mode goes through the whole service path (engine
client -> in-process HTTP -> batcher -> pipeline); the plain mode calls the diffusers pipeline
directly, one request per call, one call at a time (a device runs one thing at once).

    .venv/bin/python bench/diffusion.py --arch demo --size 64 --steps 4 --requests 48 --concurrency 8
    .venv/bin/python bench/diffusion.py --arch sd15 --size 512 --steps 30 --requests 64 --concurrency 16  # GPU
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from gateway.config import EngineConfig, GpuConfig
from gateway.domain.generation import EngineRequest
from gateway.engines.diffusion import DiffusionEngine, in_process_client
from gateway.gpu.architectures import build_random_pipeline
from gateway.gpu.demo_model import make_demo_model
from gateway.gpu.pipelines import LoadedModel, load_model, prepare_pipeline, resolve_device, resolve_dtype
from gateway.gpu.server import create_gpu_app
from gateway.gpu.service import GpuService

PROMPTS = ["a lighthouse at dusk", "a red fox in snow", "an isometric city", "a bowl of ramen", "a sailing ship"]


@dataclass
class Run:
    mode: str
    seconds: float
    latencies: list[float]
    images: int
    calls: int

    def row(self) -> list[str]:
        lat = sorted(self.latencies)
        return [
            self.mode,
            f"{self.images / self.seconds:.2f}",
            f"{_percentile(lat, 50) * 1000:.0f}",
            f"{_percentile(lat, 99) * 1000:.0f}",
            str(self.calls),
            f"{self.images / max(self.calls, 1):.2f}",
        ]


def _percentile(values: list[float], pct: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(pct) - 1]


def build_model(args: argparse.Namespace, config: GpuConfig) -> LoadedModel:
    """The demo model (or a folder), or a full-size random-weight SD1.5/SDXL built on the device."""
    if args.arch == "demo":
        path = Path(args.model) if args.model != "demo" else make_demo_model(Path(tempfile.mkdtemp()) / "demo")
        return load_model(path, config)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    pipe = build_random_pipeline(args.arch, device=device, dtype=dtype)
    prepare_pipeline(pipe, device=device)
    family: Literal["sd15", "sdxl"] = "sdxl" if args.arch == "sdxl" else "sd15"
    return LoadedModel(pipe, family=family, device=device, compile=config.compile, max_batch=config.max_batch)


def make_request(i: int, args: argparse.Namespace) -> EngineRequest:
    return EngineRequest(
        job_id=f"bench-{i}",
        operation="text-to-image",
        prompt=PROMPTS[i % len(PROMPTS)],
        width=args.size,
        height=args.size,
        steps=args.steps,
        guidance_scale=7.5,
        seed=1000 + i,
        n=args.n,
    )


async def closed_loop(args: argparse.Namespace, one: Callable[[int], Awaitable[None]]) -> tuple[float, list[float]]:
    """Run `args.requests` calls of `one` from `args.concurrency` clients; wall time and latencies."""
    counter = iter(range(args.requests))
    latencies: list[float] = []

    async def client() -> None:
        for i in counter:
            started = time.perf_counter()
            await one(i)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(args.concurrency)))
    return time.perf_counter() - started, latencies


async def run_plain(model: LoadedModel, args: argparse.Namespace) -> Run:
    """One diffusers call per request, serialised on the device."""
    pipe = model.pipelines["text-to-image"]
    device_lock = asyncio.Lock()  # FIFO, like the batcher's queue, so latencies compare fairly
    calls = 0

    def call(i: int) -> None:
        nonlocal calls
        req = make_request(i, args)
        generators = [torch.Generator("cpu").manual_seed(req.seed + k) for k in range(req.n)]
        with torch.inference_mode():
            pipe(
                prompt=req.prompt,
                num_images_per_prompt=req.n,
                num_inference_steps=req.steps,
                guidance_scale=req.guidance_scale,
                width=req.width,
                height=req.height,
                generator=generators,
                output_type="pil",
            )
            calls += 1

    async def one(i: int) -> None:
        async with device_lock:
            await asyncio.to_thread(call, i)

    await one(0)  # warm-up, not counted
    calls = 0
    seconds, latencies = await closed_loop(args, one)
    return Run("plain diffusers, 1 call/request", seconds, latencies, args.requests * args.n, calls)


async def run_batched(model: LoadedModel, config: GpuConfig, args: argparse.Namespace) -> Run:
    """The service: engine client, in-process HTTP, batcher, pipeline."""
    service = GpuService(config, None, model=model)
    engine = DiffusionEngine(
        "bench",
        EngineConfig(kind="diffusion", timeout_s=3600, request_timeout_s=600),
        in_process_client(create_gpu_app(config, None, service=service)),
    )

    async def one(i: int) -> None:
        result = await engine.generate(make_request(i, args), lambda fraction: None)
        assert len(result.images) == args.n

    await one(0)
    assert service.batcher is not None
    calls_before = service.batcher.stats.pipeline_calls
    seconds, latencies = await closed_loop(args, one)
    calls = service.batcher.stats.pipeline_calls - calls_before
    await engine.aclose()
    await service.aclose()
    label = f"batched service (max_batch {config.max_batch}, window {config.batch_window_ms:g} ms)"
    return Run(label, seconds, latencies, args.requests * args.n, calls)


def print_table(runs: list[Run], args: argparse.Namespace, model: LoadedModel) -> None:
    header = ["mode", "images/s", "p50 ms", "p99 ms", "pipeline calls", "images/call"]
    rows = [header, *(r.row() for r in runs)]
    widths = [max(len(row[c]) for row in rows) for c in range(len(header))]
    print(
        f"model {args.arch} ({model.family}) on {model.device} {model.dtype}; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
    )
    print(
        f"{args.requests} requests x n={args.n}, {args.size}x{args.size}, {args.steps} steps, "
        f"concurrency {args.concurrency}\n"
    )
    for i, row in enumerate(rows):
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    plain, batched = runs
    throughput = (batched.images / batched.seconds) / (plain.images / plain.seconds)
    p50 = _percentile(sorted(batched.latencies), 50) / _percentile(sorted(plain.latencies), 50)
    print(f"\nbatched / plain: throughput x{throughput:.2f}, p50 latency x{p50:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo", help='a local diffusers folder, or "demo" (built in a temp dir)')
    parser.add_argument(
        "--arch",
        choices=["demo", "sd15", "sdxl"],
        default="demo",
        help="demo: --model; sd15/sdxl: full-size random weights built on the device",
    )
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--n", type=int, default=1, help="images per request")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--window-ms", type=float, default=10.0)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    config = GpuConfig(
        device=args.device,
        dtype=args.dtype,
        compile=args.compile,
        max_batch=args.max_batch,
        batch_window_ms=args.window_ms,
    )
    model = build_model(args, config)

    async def both() -> list[Run]:
        return [await run_plain(model, args), await run_batched(model, config, args)]

    print_table(asyncio.run(both()), args, model)


if __name__ == "__main__":
    main()
