"""Spans of the GPU service's work, recorded after the fact from the batcher's timings.

One pipeline call serves the images of several requests, and runs in a worker thread, so its
spans cannot be opened around the work in each request's context. The batcher notes the times
(arrival, batch start, last denoising step, end) and each request whose trace was recording gets,
under its own span: `gpu.queue_wait`, then `gpu.batch` (batch size, its own images) with
`gpu.denoise` and `gpu.encode` (VAE decode and image encoding, after the last step) inside.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from opentelemetry.context import Context

from gateway.gpu.work import BatchKey
from gateway.observability.tracing import child_context, record_span


@dataclass(frozen=True, slots=True)
class TracedSlice:
    """One request's share of a batch: where its trace is and when its images were queued."""

    parent: Context
    arrived_ns: int
    images: int


@dataclass(frozen=True, slots=True)
class BatchTimes:
    started_ns: int
    last_step_ns: int | None  # None: no step finished (the call failed early)
    ended_ns: int


def record_batch(
    key: BatchKey, batch_size: int, shares: Sequence[TracedSlice], times: BatchTimes, failed: str | None = None
) -> None:
    """Record the queue wait and the batch's spans under each traced request's span."""
    for share in shares:
        record_span(
            "gpu.queue_wait",
            parent=share.parent,
            start_ns=share.arrived_ns,
            end_ns=max(share.arrived_ns, times.started_ns),
            attributes={"gateway.gpu.images": share.images},
        )
        batch = record_span(
            "gpu.batch",
            parent=share.parent,
            start_ns=times.started_ns,
            end_ns=times.ended_ns,
            attributes={
                "gateway.gpu.batch_size": batch_size,
                "gateway.gpu.images": share.images,
                "gateway.gpu.operation": key.operation,
                "gateway.gpu.width": key.width,
                "gateway.gpu.height": key.height,
                "gateway.gpu.steps": key.steps,
                "gateway.gpu.sampler": key.sampler,
            },
            failed=failed,
        )
        if times.last_step_ns is None:
            continue
        inside = child_context(batch)
        record_span("gpu.denoise", parent=inside, start_ns=times.started_ns, end_ns=times.last_step_ns)
        record_span("gpu.encode", parent=inside, start_ns=times.last_step_ns, end_ns=times.ended_ns)
