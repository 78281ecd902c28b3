"""bench/diffusion.py on the CPU: its baseline is a model of its own, and a run writes every row."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.diffusion import build_baseline, build_service_model, main, parse_args, service_config, shared_tensors
from gateway.gpu.compiled import ShapeGate
from gateway.gpu.pipelines import LoadedModel


def test_the_benchmarks_baseline_does_not_share_the_services_model() -> None:
    args = parse_args(["--device", "cpu", "--compile", "--compile-backend", "eager"])
    baseline = build_baseline(args, "cpu", torch.float32)
    model = build_service_model(args, service_config(args))
    assert shared_tensors(baseline, model) == 0
    # The service's UNet and VAE decoder are gated for compile; the baseline's are diffusers' own.
    assert isinstance(model.pipelines["text-to-image"].unet.forward, ShapeGate)
    for pipe in baseline.values():
        assert not isinstance(pipe.unet.forward, ShapeGate)
        assert not isinstance(pipe.vae.decoder.forward, ShapeGate)
        assert pipe.unet is baseline["text-to-image"].unet  # from_pipe: the baseline's own one copy
    # The check itself can fail: a service built around the baseline's pipeline shares its weights.
    sharing = LoadedModel(baseline["text-to-image"], family="sd15", device="cpu")
    assert shared_tensors(baseline, sharing) > 0


@pytest.mark.slow
def test_a_benchmark_run_writes_a_row_per_operation_batch_size_and_mode(tmp_path: Path) -> None:
    argv = ["--device", "cpu", "--steps", "2", "--batch-sizes", "1,2", "--images", "2", "--repeats", "1"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    table = (tmp_path / "tiny-sd15-64.md").read_text()
    rows = [line.split("|")[1:4] for line in table.splitlines() if line.startswith("| ") and "operation" not in line]
    assert [tuple(cell.strip() for cell in row) for row in rows] == [
        ("text-to-image", "1", "diffusers"),
        ("text-to-image", "1", "service"),
        ("text-to-image", "2", "diffusers"),
        ("text-to-image", "2", "service"),
        ("image-to-image", "2", "diffusers"),
        ("image-to-image", "2", "service"),
        ("inpaint", "2", "diffusers"),
        ("inpaint", "2", "service"),
    ]
    assert "text-to-image images/s by batch size" in table
    assert (tmp_path / "tiny-sd15-64.json").is_file()
