"""The GPU service's wire format.

`POST /v1/generate` takes an `EngineRequest` as JSON (bytes fields, the input images, are
base64 strings) and answers `application/x-ndjson`: one `Accepted` line, `Progress` lines
(per denoising step, and repeated as a heartbeat while queued), then exactly one `Result` or
`Failed` line. Errors found before any work starts are plain HTTP statuses with an `ErrorBody`.
The client side (gateway/engines/diffusion.py) mirrors these Structs without importing this
package; tests/integration/gpu checks that the two agree.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from gateway.domain.generation import GeneratedImage, Operation, Sampler

NDJSON = "application/x-ndjson"


class Accepted(msgspec.Struct, frozen=True, kw_only=True, tag="accepted", tag_field="type"):
    """The request passed validation and is queued behind `queue_depth` images."""

    queue_depth: int


class Progress(msgspec.Struct, frozen=True, kw_only=True, tag="progress", tag_field="type"):
    """Fraction of the request's images done, 0..1."""

    fraction: float


class Result(msgspec.Struct, frozen=True, kw_only=True, tag="result", tag_field="type"):
    """The images made; `failed` names the indices that did not come out, with a reason."""

    images: list[GeneratedImage]
    failed: dict[int, str] = msgspec.field(default_factory=dict)
    gpu_seconds: float = 0.0


class Failed(msgspec.Struct, frozen=True, kw_only=True, tag="error", tag_field="type"):
    """No image came out. `rejected`: the request was bad; `unavailable`: the service failed."""

    kind: Literal["rejected", "unavailable"]
    message: str


GenerateEvent = Accepted | Progress | Result | Failed


ErrorKind = Literal["rejected", "unavailable", "draining", "unsupported"]


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    """The body of a non-200 answer (401s are litestar's own body)."""

    kind: ErrorKind
    detail: str


ServiceStatus = Literal["ok", "loading", "warming", "draining", "failed"]


class Health(msgspec.Struct, frozen=True, kw_only=True):
    """`GET /v1/health`: 200 when ready; 503 while loading, warming (compiling the declared
    shapes), draining, or after a device fault ("failed": only a restart clears it)."""

    status: ServiceStatus
    device: str | None = None
    detail: str | None = None


class Capacity(msgspec.Struct, frozen=True, kw_only=True):
    """`GET /v1/capacity`: what the service is and how busy it is."""

    status: ServiceStatus
    queue_depth: int  # images waiting for a batch
    in_flight: int  # images in the running batch
    max_batch: int
    batch_window_ms: float
    device: str | None
    dtype: str | None
    family: str | None
    operations: list[Operation]
    samplers: list[Sampler]
    pipeline_calls: int
    images: int
