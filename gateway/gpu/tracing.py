"""Spans of the GPU service's work, recorded after the fact from the batcher's timings.

One batch serves the images of several requests, and its stages run on other threads (denoising
on the GPU thread, decoding on the decode thread, encoding on the CPU pool), so its spans cannot be
opened around the work in each request's context. The batcher notes the times of each stage and
every request whose trace was recording gets, under its own span: `gpu.queue_wait`, then
`gpu.batch` (the batch size, its own images) with `gpu.denoise`, `gpu.decode` (the VAE) and
`gpu.encode` (the image files) inside.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

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
    """When each stage of one batch began and ended (wall clock, ns); None: not reached."""

    started_ns: int
    denoised_ns: int | None = None
    decode_started_ns: int | None = None
    decoded_ns: int | None = None
    ended_ns: int | None = None

    def denoised(self) -> BatchTimes:
        return replace(self, denoised_ns=time.time_ns())

    def decoding(self) -> BatchTimes:
        return replace(self, decode_started_ns=time.time_ns())

    def decoded(self) -> BatchTimes:
        return replace(self, decoded_ns=time.time_ns())

    def ended(self) -> BatchTimes:
        return replace(self, ended_ns=time.time_ns())


def record_batch(
    key: BatchKey, batch_size: int, shares: Sequence[TracedSlice], times: BatchTimes, failed: str | None = None
) -> None:
    """Record the queue wait and the batch's spans under each traced request's span."""
    ended = times.ended_ns or time.time_ns()
    stages = (
        ("gpu.denoise", times.started_ns, times.denoised_ns),
        ("gpu.decode", times.decode_started_ns, times.decoded_ns),
        ("gpu.encode", times.decoded_ns, ended if failed is None else None),
    )
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
            end_ns=ended,
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
        inside = child_context(batch)
        for name, start, end in stages:
            if start is not None and end is not None:
                record_span(name, parent=inside, start_ns=start, end_ns=end)
