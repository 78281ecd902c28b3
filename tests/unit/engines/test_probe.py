"""`gateway doctor`'s probe of a remote GPU worker: health, then capacity behind the shared secret."""

from __future__ import annotations

import httpx

from gateway.config import EngineConfig, Secret
from gateway.engines.probe import probe_engine

SECRET = "shared"
CONFIG = EngineConfig(kind="diffusion", base_url="http://gpu:8090", api_key_env="GPU_SECRET", api_key=Secret(SECRET))


def gpu_worker(status: str = "ok") -> httpx.MockTransport:
    """Answers as gateway/gpu/server.py does: /v1/health without auth, /v1/capacity behind the secret."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/health":
            return httpx.Response(200 if status == "ok" else 503, json={"status": status, "device": "cuda"})
        if request.headers.get("authorization") != f"Bearer {SECRET}":
            return httpx.Response(401, json={"detail": "missing or wrong shared secret"})
        return httpx.Response(200, json={"status": status, "family": "sdxl", "device": "cuda", "dtype": "float16"})

    return httpx.MockTransport(handle)


async def test_a_healthy_worker_reports_its_model_and_accepts_the_secret() -> None:
    probe = await probe_engine("gpu", CONFIG, gpu_worker())
    assert probe.ok
    assert "model sdxl on cuda" in probe.detail


async def test_a_wrong_secret_fails_naming_the_variable() -> None:
    config = EngineConfig(kind="diffusion", base_url="http://gpu:8090", api_key_env="GPU_SECRET", api_key=Secret("x"))
    probe = await probe_engine("gpu", config, gpu_worker())
    assert not probe.ok
    assert "$GPU_SECRET" in probe.detail


async def test_a_loading_worker_is_not_ready() -> None:
    probe = await probe_engine("gpu", CONFIG, gpu_worker("loading"))
    assert not probe.ok
    assert "not ready: loading" in probe.detail


async def test_an_unreachable_worker_fails_naming_its_address() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    probe = await probe_engine("gpu", CONFIG, httpx.MockTransport(refuse))
    assert not probe.ok
    assert "unreachable at http://gpu:8090" in probe.detail


async def test_the_in_process_service_needs_no_network() -> None:
    probe = await probe_engine("local", EngineConfig(kind="diffusion"))
    assert probe.ok
    assert "in-process" in probe.detail
