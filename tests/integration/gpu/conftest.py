"""The demo model, built once per test session, and a loaded copy shared by the GPU tests."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from gateway.config import GpuConfig, Secret
from gateway.gpu.demo_model import make_demo_model

if TYPE_CHECKING:
    from gateway.gpu.pipelines import LoadedModel

SECRET = "test-shared-secret"


def gpu_config(**overrides: object) -> GpuConfig:
    """CPU, a short batching window, and a shared secret."""
    values: dict[str, object] = {
        "device": "cpu",
        "max_batch": 8,
        "batch_window_ms": 50.0,
        "shared_secret": Secret(SECRET),
    }
    values.update(overrides)
    return GpuConfig(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def demo_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_model(tmp_path_factory.getbasetemp() / "demo-model")


@pytest.fixture(scope="session")
def demo_model(demo_model_path: Path) -> LoadedModel:
    from gateway.gpu.pipelines import load_model

    return load_model(demo_model_path, gpu_config())
