"""The demo model, built once per test session, and a loaded copy shared by the GPU tests."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import httpx
import msgspec
import pytest
from litestar import Litestar

from gateway.config import GpuConfig, Secret
from gateway.gpu.demo_model import make_demo_model

if TYPE_CHECKING:
    from gateway.gpu.pipelines import LoadedModel

SECRET = "test-shared-secret"


def gpu_config(**overrides: Any) -> GpuConfig:
    """CPU, a short batching window, and a shared secret."""
    base = GpuConfig(device="cpu", max_batch=8, batch_window_ms=50.0, shared_secret=Secret(SECRET))
    return msgspec.structs.replace(base, **overrides)


def asgi_client(app: Litestar) -> httpx.AsyncClient:
    """A client over httpx's own (buffering) ASGI transport, as a plain embedding would use."""
    # Litestar's precise ASGI types do not match httpx's loose callable signature.
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=cast(Any, app)), base_url="http://gpu")


@pytest.fixture(scope="session")
def demo_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_model(tmp_path_factory.getbasetemp() / "demo-model")


@pytest.fixture(scope="session")
def demo_model(demo_model_path: Path) -> LoadedModel:
    from gateway.gpu.pipelines import load_model

    return load_model(demo_model_path, gpu_config())
