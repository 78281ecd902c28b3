"""The GPU worker, a process of its own, joins the caller's trace: the diffusion engine sends W3C
traceparent, and the worker's spans (queue wait, batch, denoising, decoding, encoding) reach a collector
with the caller's trace id."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import msgspec
import pytest

from gateway.config import EngineConfig, Secret
from gateway.domain.generation import EngineRequest
from gateway.engines.diffusion import DiffusionEngine
from gateway.observability.context import bind
from gateway.observability.tracing import span
from tests.integration.gpu.test_gpu_worker import BODY, SECRET, free_port, wait_healthy
from tests.otlp_receiver import OtlpReceiver, otlp_receiver
from tests.spans import recording_spans

REQUEST = {**BODY, "n": 2}
GPU_SPANS = {"POST /v1/generate", "gpu.queue_wait", "gpu.batch", "gpu.denoise", "gpu.decode", "gpu.encode"}


def start_traced_worker(model: Path, port: int, collector: str) -> subprocess.Popen[bytes]:
    gpu = {"model_path": str(model), "device": "cpu", "port": port, "secret_env": "GPU_SECRET", "batch_window_ms": 0}
    code = (
        "import os, sys; from gateway.config import load_settings; from gateway.gpu.server import run_gpu_worker; "
        "env = {'GPU_SECRET': os.environ['GPU_SECRET']}; "
        f"sys.exit(run_gpu_worker(load_settings(env, overrides={{'log_level': 'warning', 'gpu': {gpu!r}}})))"
    )
    otel = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": collector, "OTEL_BSP_SCHEDULE_DELAY": "50"}
    env = {**os.environ, "GPU_SECRET": SECRET, "HF_HUB_OFFLINE": "1", **otel}
    env.pop("OTEL_SERVICE_NAME", None)
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


async def wait_for_spans(receiver: OtlpReceiver, names: set[str]) -> None:
    deadline = time.monotonic() + 20
    while not names <= {s.name for s in receiver.spans}:
        assert time.monotonic() < deadline, f"the collector got only {[s.name for s in receiver.spans]}"
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_the_gpu_worker_process_shares_the_callers_trace(demo_model_path: Path) -> None:
    port = free_port()
    with otlp_receiver() as receiver:
        proc = start_traced_worker(demo_model_path, port, receiver.endpoint)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as probe:
                wait_healthy(probe, proc)
            config = EngineConfig(kind="diffusion", base_url=f"http://127.0.0.1:{port}", api_key=Secret(SECRET))
            engine = DiffusionEngine("gpu", config, httpx.AsyncClient())
            request = msgspec.convert(REQUEST, EngineRequest)
            with recording_spans() as spans, bind(request_id="req-gpu-1"), span("engine.attempt") as attempt:
                result = await engine.generate(request, lambda _: None)
            await engine.aclose()
            assert len(result.images) == 2
            await wait_for_spans(receiver, GPU_SPANS)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            if proc.stdout is not None:
                proc.stdout.close()
    caller = attempt.get_span_context()
    assert spans.one("engine.attempt").context.span_id == caller.span_id
    trace_id = format(caller.trace_id, "032x")
    worker = [s for s in receiver.spans if s.name in GPU_SPANS]
    assert {s.trace_id for s in worker} == {trace_id}, "the worker's spans are in the caller's trace"
    assert {s.service for s in worker} == {"image-gateway-gpu"}
    [server] = receiver.named("POST /v1/generate")
    assert server.parent_span_id == format(caller.span_id, "016x")
    assert server.attributes["gateway.request_id"] == "req-gpu-1"
    [batch] = receiver.named("gpu.batch")
    assert batch.parent_span_id == server.span_id
    assert batch.attributes["gateway.gpu.batch_size"] == 2
    assert batch.attributes["gateway.gpu.steps"] == 2
    [wait] = receiver.named("gpu.queue_wait")
    assert wait.parent_span_id == server.span_id
    assert wait.end_ns <= batch.start_ns
    stages = [receiver.named(name)[0] for name in ("gpu.denoise", "gpu.decode", "gpu.encode")]
    assert [s.end_ns <= t.start_ns for s, t in itertools.pairwise(stages)] == [True, True], "in order"
    for name in ("gpu.denoise", "gpu.decode", "gpu.encode"):
        [inside] = receiver.named(name)
        assert inside.parent_span_id == batch.span_id
        assert batch.start_ns <= inside.start_ns <= inside.end_ns <= batch.end_ns
    # The worker's part of the trace, for `pytest -s`.
    for name in ("POST /v1/generate", "gpu.queue_wait", "gpu.batch", "gpu.denoise", "gpu.decode", "gpu.encode"):
        [received] = receiver.named(name)
        print(f"{name}  {(received.end_ns - received.start_ns) / 1e6:.2f} ms")
