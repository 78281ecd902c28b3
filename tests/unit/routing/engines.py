"""In-memory engines with scripted behaviour, for router tests."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from gateway.domain.generation import EngineRequest, EngineResult, GeneratedImage, Operation
from gateway.engines.base import Capabilities, EngineError, ProgressCallback, as_asked

ALL_OPS = Capabilities(operations=frozenset({"text-to-image", "image-to-image", "inpaint"}))

OK = 1_000  # return all n images
Step = EngineError | int | float  # raise it / return that many images (OK: n) / sleep that long, then n images


class ScriptedEngine:
    """Plays `script` one step per call, then repeats the last step."""

    def __init__(
        self,
        name: str,
        *script: Step,
        kind: str = "diffusion",
        capabilities: Capabilities = ALL_OPS,
        options: frozenset[str] = frozenset(),
    ) -> None:
        self.name = name
        self.kind = kind
        self.capabilities = capabilities
        self.script = list(script) or [OK]
        self.options = options
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.closed = False

    def check_options(self, options: Mapping[str, Any], operation: Operation | None = None) -> str | None:
        del operation
        unknown = set(options) - self.options
        return f"engine_options.{self.kind}.{sorted(unknown)[0]} is unknown" if unknown else None

    def received(self, request: EngineRequest) -> dict[str, Any]:
        return as_asked(request)

    async def generate(self, request: EngineRequest, progress: ProgressCallback) -> EngineResult:
        step = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            progress(0.5)
            if isinstance(step, EngineError):
                raise step
            count = request.n if step == OK else int(step)
            if isinstance(step, float):
                # A float step is an engine that takes that long: the slowness is what deadline and
                # concurrency tests exercise, so this sleep stays.
                await asyncio.sleep(step)
                count = request.n
            else:
                await asyncio.sleep(0)
            images = [GeneratedImage(index=i, data=b"png", media_type="image/png") for i in range(count)]
            return EngineResult(images=images)
        finally:
            self.in_flight -= 1

    async def aclose(self) -> None:
        self.closed = True
