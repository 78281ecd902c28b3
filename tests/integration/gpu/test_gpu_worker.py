"""`run_gpu_worker` as a real process: it serves, and SIGTERM drains it before it exits."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import msgspec
import pytest

from gateway.gpu import protocol
from tests.waiting import eventually_blocking

SECRET = "worker-secret"
EVENTS = msgspec.json.Decoder(protocol.GenerateEvent)
BODY = {
    "job_id": "job",
    "operation": "text-to-image",
    "prompt": "a kite",
    "width": 64,
    "height": 64,
    "steps": 2,
    "guidance_scale": 5.0,
    "seed": 1,
    "n": 1,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_worker(model: Path, port: int) -> subprocess.Popen[bytes]:
    # A long batching window keeps the first request queued while the test sends SIGTERM.
    gpu = {"model_path": str(model), "device": "cpu", "port": port, "secret_env": "GPU_SECRET", "batch_window_ms": 400}
    code = (
        "import os, sys; from gateway.config import load_settings; from gateway.gpu.server import run_gpu_worker; "
        "env = {'GPU_SECRET': os.environ['GPU_SECRET']}; "
        f"sys.exit(run_gpu_worker(load_settings(env, overrides={{'log_level': 'warning', 'gpu': {gpu!r}}})))"
    )
    env = {**os.environ, "GPU_SECRET": SECRET, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def wait_healthy(client: httpx.Client, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        try:
            if client.get("/v1/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail("gpu-worker did not become healthy")


@pytest.mark.slow
def test_sigterm_drains_queued_work_then_exits_cleanly(demo_model_path: Path) -> None:
    port = free_port()
    proc = start_worker(demo_model_path, port)
    headers = {"Authorization": f"Bearer {SECRET}"}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            wait_healthy(client, proc)
            with client.stream("POST", "/v1/generate", json=BODY, headers=headers) as admitted:
                lines = admitted.iter_lines()
                assert isinstance(EVENTS.decode(next(lines)), protocol.Accepted)
                proc.send_signal(signal.SIGTERM)
                eventually_blocking(
                    lambda: client.get("/v1/health").status_code == 503, timeout_s=10, what="the worker draining"
                )
                refused = client.post("/v1/generate", json=BODY, headers=headers)
                assert refused.status_code == 503
                assert isinstance(EVENTS.decode(list(lines)[-1]), protocol.Result)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
