"""Dynamic batching: images of concurrent requests that can share a denoising loop share one call.

Requests queue as slices of images. The oldest slice decides the next batch's key; the batcher
waits up to `window_s` after that slice arrived for more compatible images (or until `max_batch`
of them are waiting), then runs them as one pipeline call in a worker thread. One batch is in
flight at a time, so while it runs the next one fills up: under load batches form even with a
zero window. A request larger than `max_batch` is spread over several calls.

When the device runs out of memory, the batch is split in halves and each half retried; a
single image that still does not fit fails alone, and its request gets the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from opentelemetry.context import Context

from gateway.gpu.tracing import BatchTimes, TracedSlice, record_batch
from gateway.gpu.work import Batch, BatchKey, DeviceOutOfMemory, ImageWork, Runner
from gateway.observability.tracing import current_context

log = logging.getLogger(__name__)

ProgressFn = Callable[[float], None]


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """What a request got: encoded images and failure reasons by index, and its share of device time."""

    images: dict[int, bytes]
    failed: dict[int, str]
    gpu_seconds: float


@dataclass(eq=False)
class _Job:
    key: BatchKey
    works: Sequence[ImageWork]
    on_progress: ProgressFn
    future: asyncio.Future[JobOutcome]
    images: dict[int, bytes] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    gpu_seconds: float = 0.0
    # The submitting request's trace context (None unless tracing records it) and when it arrived.
    trace: Context | None = None
    arrived_ns: int = 0

    @property
    def done_count(self) -> int:
        return len(self.images) + len(self.failed)

    def finish_if_complete(self) -> None:
        if self.done_count == len(self.works) and not self.future.done():
            self.future.set_result(JobOutcome(dict(self.images), dict(self.failed), self.gpu_seconds))


@dataclass(eq=False)
class _Slice:
    job: _Job
    indices: list[int]
    arrived: float


@dataclass
class BatcherStats:
    """Counters for tests and the capacity endpoint."""

    pipeline_calls: int = 0
    images: int = 0
    oom_splits: int = 0
    recent_batch_sizes: deque[int] = field(default_factory=lambda: deque(maxlen=256))


class Batcher:
    """Groups compatible images into batches and runs them on one device, one batch at a time."""

    def __init__(self, runner: Runner, *, max_batch: int, window_s: float) -> None:
        self._runner = runner
        self.max_batch = max_batch
        self.window_s = window_s
        self.stats = BatcherStats()
        self._pending: list[_Slice] = []
        self._in_flight = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def queue_depth(self) -> int:
        """Images waiting for a batch."""
        return sum(len(s.indices) for s in self._pending)

    @property
    def in_flight(self) -> int:
        """Images in the batch running now."""
        return self._in_flight

    @property
    def idle(self) -> bool:
        """Nothing waiting and nothing running."""
        return not self._pending and not self._in_flight

    async def submit(self, key: BatchKey, works: Sequence[ImageWork], on_progress: ProgressFn) -> JobOutcome:
        """Queue one request's images and wait for all of them (made or failed).

        Cancelling the caller drops the images that have not started yet.
        """
        if not works:
            return JobOutcome({}, {}, 0.0)
        self._ensure_running()
        job = _Job(
            key,
            works,
            on_progress,
            asyncio.get_running_loop().create_future(),
            trace=current_context(),
            arrived_ns=time.time_ns(),
        )
        self._pending.append(_Slice(job, list(range(len(works))), time.monotonic()))
        self._wakeup.set()
        return await job.future

    async def aclose(self) -> None:
        """Stop the scheduling loop; waiting requests are cancelled."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for pending in self._pending:
            pending.job.future.cancel()
        self._pending.clear()

    def _ensure_running(self) -> None:
        # Started lazily so the batcher works under any event loop, including an in-process
        # ASGI transport that never sends lifespan events.
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="gpu-batcher")

    async def _loop(self) -> None:
        while True:
            self._drop_cancelled()
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            oldest = self._pending[0]
            deadline = oldest.arrived + self.window_s
            while self._compatible_images(oldest.job.key) < self.max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            slices = self._take(oldest.job.key)
            if slices:
                await self._run(oldest.job.key, slices)

    def _drop_cancelled(self) -> None:
        self._pending = [s for s in self._pending if not s.job.future.done()]

    def _compatible_images(self, key: BatchKey) -> int:
        return sum(len(s.indices) for s in self._pending if s.job.key == key and not s.job.future.done())

    def _take(self, key: BatchKey) -> list[_Slice]:
        """Remove up to max_batch images of `key` from the queue, oldest first, splitting a slice if needed."""
        taken: list[_Slice] = []
        room = self.max_batch
        keep: list[_Slice] = []
        for pending in self._pending:
            if room == 0 or pending.job.key != key or pending.job.future.done():
                keep.append(pending)
                continue
            head, tail = pending.indices[:room], pending.indices[room:]
            taken.append(_Slice(pending.job, head, pending.arrived))
            room -= len(head)
            if tail:
                keep.append(_Slice(pending.job, tail, pending.arrived))
        self._pending = keep
        return taken

    async def _run(self, key: BatchKey, slices: list[_Slice]) -> None:
        size = sum(len(s.indices) for s in slices)
        self._in_flight = size
        try:
            await self._run_split(key, slices)
        finally:
            self._in_flight = 0

    async def _run_split(self, key: BatchKey, slices: list[_Slice]) -> None:
        works = [s.job.works[i] for s in slices for i in s.indices]
        loop = asyncio.get_running_loop()

        last_step_ns: list[int] = []  # when the latest denoising step ended (written by the worker thread)

        def on_step(step: int, total: int) -> None:
            # Runs in the worker thread: hand the numbers to the event loop.
            if step >= total:
                last_step_ns.append(time.time_ns())
            loop.call_soon_threadsafe(self._report_progress, slices, step / max(total, 1))

        started = time.perf_counter()
        started_ns = time.time_ns()

        def traced(failed: str | None = None) -> None:
            shares = [TracedSlice(s.job.trace, s.job.arrived_ns, len(s.indices)) for s in slices if s.job.trace]
            if shares:
                times = BatchTimes(started_ns, last_step_ns[-1] if last_step_ns else None, time.time_ns())
                record_batch(key, len(works), shares, times, failed)

        try:
            outputs = await asyncio.to_thread(self._runner.run, Batch(key, works), on_step)
        except DeviceOutOfMemory:
            if len(works) > 1:
                self.stats.oom_splits += 1
                log.warning("out of device memory at batch %d; retrying in halves", len(works))
                first, second = _halve(slices)
                await self._run_split(key, first)
                await self._run_split(key, second)
                return
            traced("out of device memory")
            self._fail(slices, "out of device memory")
            return
        except Exception as exc:
            # A bug or a device fault: the requests in this batch get an error, the service lives on.
            log.exception("pipeline call failed for a batch of %d", len(works))
            traced(f"generation failed ({type(exc).__name__})")
            self._fail(slices, f"generation failed ({type(exc).__name__})")
            return
        traced()
        elapsed = time.perf_counter() - started
        self.stats.pipeline_calls += 1
        self.stats.images += len(works)
        self.stats.recent_batch_sizes.append(len(works))
        outputs_iter = iter(outputs)
        for piece in slices:
            piece.job.gpu_seconds += elapsed * len(piece.indices) / len(works)
            for index in piece.indices:
                piece.job.images[index] = next(outputs_iter)
            piece.job.finish_if_complete()

    def _report_progress(self, slices: list[_Slice], fraction: float) -> None:
        for piece in slices:
            job = piece.job
            if job.future.done():
                continue
            total = len(job.works)
            job.on_progress(min(1.0, (job.done_count + fraction * len(piece.indices)) / total))

    def _fail(self, slices: list[_Slice], reason: str) -> None:
        for piece in slices:
            for index in piece.indices:
                piece.job.failed[index] = reason
            piece.job.finish_if_complete()


def _halve(slices: list[_Slice]) -> tuple[list[_Slice], list[_Slice]]:
    """Split a batch's slices into two batches of (nearly) equal image counts."""
    flat = [(s.job, i, s.arrived) for s in slices for i in s.indices]
    middle = len(flat) // 2

    def regroup(items: list[tuple[_Job, int, float]]) -> list[_Slice]:
        out: list[_Slice] = []
        for job, index, arrived in items:
            if out and out[-1].job is job:
                out[-1].indices.append(index)
            else:
                out.append(_Slice(job, [index], arrived))
        return out

    return regroup(flat[:middle]), regroup(flat[middle:])
