"""Valid sample `EngineRequest`s and `EngineConfig`s for engine tests."""

from __future__ import annotations

from typing import Any

from gateway.config import EngineConfig, EngineKind, Secret
from gateway.domain.generation import EngineRequest, ImageInput, Operation
from tests.fakes.images import png


def image_input(width: int = 512, height: int = 512, *, url: str | None = None, mask: bool = False) -> ImageInput:
    """A PNG input (white for a mask: repaint everything)."""
    color = (255, 255, 255) if mask else (200, 80, 40)
    return ImageInput(data=png(width, height, color), media_type="image/png", width=width, height=height, url=url)


def sample_request(
    operation: Operation = "text-to-image", n: int = 1, *, urls: bool = True, **fields: Any
) -> EngineRequest:
    """A request every vendor engine serving `operation` accepts; `fields` override."""
    base = "https://gateway.example/v1/inputs"
    values: dict[str, Any] = {
        "job_id": "job-1",
        "operation": operation,
        "prompt": "a lighthouse at dusk",
        "negative_prompt": "blurry",
        "width": 512,
        "height": 512,
        "steps": 20,
        "guidance_scale": 7.5,
        "seed": 42,
        "n": n,
    }
    if operation != "text-to-image":
        values["image"] = image_input(url=f"{base}/image.png" if urls else None)
        values["strength"] = 0.6
    if operation == "inpaint":
        values["mask"] = image_input(url=f"{base}/mask.png" if urls else None, mask=True)
    values.update(fields)
    return EngineRequest(**values)


def engine_config(kind: EngineKind, base_url: str, api_key: str = "test-key", **fields: Any) -> EngineConfig:
    """An engine table with test-sized timeouts and polling."""
    values: dict[str, Any] = {
        "kind": kind,
        "base_url": base_url,
        "api_key": Secret(api_key),
        "timeout_s": 2.0,
        # Connecting to 127.0.0.1 is instant, but a loaded test machine can stall the event loop
        # past a short limit (0.5 s failed once, with another test run beside the suite); no check
        # here is about connect timeouts (test_transport.py has its own). The same for one
        # request: 0.4 s failed once so, waiting for a 400. The hang checks end at this limit, so
        # each takes a second (about 5 s more for the suite than at 0.4 s).
        "connect_timeout_s": 2.0,
        "request_timeout_s": 1.0,
        "poll_interval_s": 0.01,
        "max_poll_interval_s": 0.03,
    }
    values.update(fields)
    return EngineConfig(**values)
