"""`[gpu]` settings: declared shapes, per-resolution batch limits, the compile cache's default place."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, GpuConfig, load_settings


def test_declared_shapes_and_limits_load_from_toml(tmp_path: Path) -> None:
    toml = tmp_path / "gateway.toml"
    toml.write_text(
        "[gpu]\ncompile = true\nresolutions = ['512x512', '768x512']\nbatch_sizes = [1, 4]\n"
        "max_batch = 8\nbatch_limits = { '768x512' = 2 }\nmemory_fraction = 0.9\n"
    )
    gpu = load_settings({}, config_path=toml, overrides={"data_dir": str(tmp_path / "data")}).gpu
    assert gpu.resolutions == ("512x512", "768x512")
    assert gpu.batch_sizes == (1, 4)
    assert gpu.memory_fraction == 0.9
    assert gpu.batch_limit(768, 512) == 2
    assert gpu.batch_limit(512, 512) == 8
    # Unset, the compile cache lives in the data folder, which survives restarts.
    assert gpu.compile_cache_dir == str((tmp_path / "data" / "compile-cache").resolve())


@pytest.mark.parametrize(
    ("gpu", "field"),
    [
        ({"resolutions": ["512"]}, "512"),
        ({"resolutions": ["500x512"]}, "500x512"),
        ({"batch_limits": {"4096x4096": 1}}, "4096x4096"),
        ({"batch_sizes": [0]}, "batch_sizes"),
        ({"memory_fraction": 1.5}, "memory_fraction"),
        ({"compile_mode": "fast"}, "compile_mode"),
    ],
)
def test_bad_gpu_settings_are_refused_naming_what_is_wrong(gpu: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({}, overrides={"gpu": gpu})
    assert field in str(caught.value)


def test_an_explicit_compile_cache_is_kept() -> None:
    settings = load_settings({}, overrides={"gpu": {"compile_cache_dir": "/var/cache/gateway"}})
    assert settings.gpu.compile_cache_dir == "/var/cache/gateway"
    assert GpuConfig().compile_cache_dir is None
