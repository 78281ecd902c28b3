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
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

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
    steps_done: dict[int, float] = field(default_factory=dict)  # per image: share of its steps done
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


class GpuThreads:
    """The two dedicated threads: "gpu" for model loading, warm-up and every denoising loop, and
    "gpu-decode" for the VAE decoder. Made on first use; `shutdown` lets them end."""

    def __init__(self) -> None:
        self._gpu: ThreadPoolExecutor | None = None
        self._decode: ThreadPoolExecutor | None = None

    @property
    def gpu(self) -> Executor:
        if self._gpu is None:
            self._gpu = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpu")
        return self._gpu

    @property
    def decode(self) -> Executor:
        if self._decode is None:
            self._decode = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpu-decode")
        return self._decode

    def shutdown(self) -> None:
        for pool in (self._gpu, self._decode):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        self._gpu = self._decode = None


class Batcher:
    """Groups compatible images into batches and denoises them on one device, one batch at a time."""

    def __init__(
        self,
        runner: Runner,
        *,
        max_batch: int,
        window_s: float,
        limit_for: Callable[[BatchKey], int] | None = None,
        threads: GpuThreads | None = None,
        max_pending_decodes: int = 2,
        on_fault: Callable[[str], None] | None = None,
    ) -> None:
        self._runner = runner
        self.max_batch = max_batch
        self.window_s = window_s
        self._limit_for = limit_for
        self._own_threads = threads is None
        self.threads = threads or GpuThreads()
        self._decode_slots = asyncio.Semaphore(max_pending_decodes)
        self._on_fault = on_fault
        self.fault: str | None = None
        self.stats = BatcherStats()
        self._pending: list[_Slice] = []
        self._in_flight = 0
        self._finishing: set[asyncio.Task[None]] = set()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def limit(self, key: BatchKey) -> int:
        """The most images one batch of `key` may hold."""
        if self._limit_for is None:
            return self.max_batch
        return max(1, min(self.max_batch, self._limit_for(key)))

    @property
    def queue_depth(self) -> int:
        """Images waiting for a batch."""
        return sum(len(s.indices) for s in self._pending)

    @property
    def in_flight(self) -> int:
        """Images being denoised, decoded or encoded now."""
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
        if self.fault is not None:
            return JobOutcome({}, dict.fromkeys(range(len(works)), "device failure"), 0.0)
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
        for task in list(self._finishing):
            task.cancel()
        await asyncio.gather(*self._finishing, return_exceptions=True)
        for pending in self._pending:
            pending.job.future.cancel()
        self._pending.clear()
        if self._own_threads:
            self.threads.shutdown()

    def _ensure_running(self) -> None:
        # Started lazily so the batcher works under any event loop, including an in-process
        # ASGI transport that never sends lifespan events.
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="gpu-batcher")

    async def _loop(self) -> None:
        while True:
            self._drop_cancelled()
            if self.fault is not None:
                self._fail(self._pending, "device failure")
                self._pending.clear()
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            oldest = self._pending[0]
            limit = self.limit(oldest.job.key)
            deadline = oldest.arrived + self.window_s
            while self._compatible_images(oldest.job.key) < limit:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            slices = self._take(oldest.job.key, limit)
            if slices:
                await self._run_split(oldest.job.key, slices)

    def _drop_cancelled(self) -> None:
        self._pending = [s for s in self._pending if not s.job.future.done()]

    def _compatible_images(self, key: BatchKey) -> int:
        return sum(len(s.indices) for s in self._pending if s.job.key == key and not s.job.future.done())

    def _take(self, key: BatchKey, limit: int) -> list[_Slice]:
        """Remove up to `limit` images of `key` from the queue, oldest first, splitting a slice if needed."""
        taken: list[_Slice] = []
        room = limit
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

    async def _run_split(self, key: BatchKey, slices: list[_Slice]) -> None:
        """Denoise on the GPU thread, then hand the latents to `_finish` and return."""
        works = [s.job.works[i] for s in slices for i in s.indices]
        loop = asyncio.get_running_loop()

        def on_step(step: int, total: int) -> None:
            # Runs in the GPU thread: hand the numbers to the event loop.
            loop.call_soon_threadsafe(self._report_progress, slices, step / max(total, 1))

        await self._decode_slots.acquire()  # backpressure: undecoded latents hold device memory
        handed_over = False
        self._in_flight += len(works)
        try:
            started = time.perf_counter()
            times = BatchTimes(started_ns=time.time_ns())
            try:
                denoised = await loop.run_in_executor(
                    self.threads.gpu, self._runner.denoise, Batch(key, works), on_step
                )
            except DeviceOutOfMemory:
                if len(works) > 1:
                    self.stats.oom_splits += 1
                    log.warning("out of device memory at batch %d; retrying in halves", len(works))
                    first, second = _halve(slices)
                    self._decode_slots.release()
                    self._in_flight -= len(works)
                    handed_over = True
                    await self._run_split(key, first)
                    await self._run_split(key, second)
                    return
                self._trace(key, slices, len(works), times.ended(), "out of device memory")
                self._fail(slices, "out of device memory")
                return
            except Exception as exc:
                self._trace(key, slices, len(works), times.ended(), f"generation failed ({type(exc).__name__})")
                self._failed(slices, exc)
                return
            times = times.denoised()
            elapsed = time.perf_counter() - started
            self.stats.pipeline_calls += 1
            self.stats.images += len(works)
            self.stats.recent_batch_sizes.append(len(works))
            task = loop.create_task(self._finish(slices, works, denoised, elapsed, times), name="gpu-finish")
            self._finishing.add(task)
            task.add_done_callback(self._finishing.discard)
            handed_over = True
        finally:
            if not handed_over:
                self._decode_slots.release()
                self._in_flight -= len(works)

    async def _finish(
        self, slices: list[_Slice], works: list[ImageWork], denoised: Any, denoise_s: float, times: BatchTimes
    ) -> None:
        """Decode on the decode thread, encode on the CPU pool, then hand each job its images."""
        loop = asyncio.get_running_loop()
        failed: str | None = "interrupted"
        try:
            started = time.perf_counter()
            times = times.decoding()
            images = await loop.run_in_executor(self.threads.decode, self._runner.decode, denoised)
            del denoised  # the device memory goes back before encoding
            times = times.decoded()
            elapsed = denoise_s + time.perf_counter() - started
            encoded = await asyncio.gather(
                *(
                    asyncio.to_thread(self._runner.encode, image, work.output_format)
                    for image, work in zip(images, works, strict=True)
                )
            )
            failed = None
        except DeviceOutOfMemory:
            failed = "out of device memory"
            self._fail(slices, failed)
            return
        except Exception as exc:
            failed = f"generation failed ({type(exc).__name__})"
            self._failed(slices, exc)
            return
        finally:
            self._decode_slots.release()
            self._in_flight -= len(works)
            self._trace(slices[0].job.key, slices, len(works), times.ended(), failed)
        outputs = iter(encoded)
        for piece in slices:
            piece.job.gpu_seconds += elapsed * len(piece.indices) / len(works)
            for index in piece.indices:
                piece.job.images[index] = next(outputs)
            piece.job.finish_if_complete()

    @staticmethod
    def _trace(key: BatchKey, slices: list[_Slice], size: int, times: BatchTimes, failed: str | None) -> None:
        """Record the batch's spans under each traced request's (gateway/gpu/tracing.py)."""
        shares = [TracedSlice(s.job.trace, s.job.arrived_ns, len(s.indices)) for s in slices if s.job.trace]
        if shares:
            record_batch(key, size, shares, times, failed)

    def _failed(self, slices: list[_Slice], exc: Exception) -> None:
        """A stage raised: a device fault stops the batcher; anything else fails this batch only."""
        if self._runner.is_fatal(exc):
            if self.fault is None:
                self.fault = f"device fault: {type(exc).__name__}: {exc}"
                log.critical("%s; failing all queued work, the service reports unhealthy", self.fault, exc_info=exc)
                if self._on_fault is not None:
                    self._on_fault(self.fault)
            self._fail(slices, "device failure")
            self._wakeup.set()  # the loop fails whatever is still queued
            return
        # A bug or a bad input: the requests in this batch get an error, the service lives on.
        log.error("pipeline call failed for a batch of %d", sum(len(s.indices) for s in slices), exc_info=exc)
        self._fail(slices, f"generation failed ({type(exc).__name__})")

    def _report_progress(self, slices: list[_Slice], fraction: float) -> None:
        # A job's images can be in different batches at once (one denoising, one decoding), so
        # its progress is the mean over its images of their share of steps done.
        for piece in slices:
            job = piece.job
            if job.future.done():
                continue
            for index in piece.indices:
                job.steps_done[index] = fraction
            job.on_progress(min(1.0, sum(job.steps_done.values()) / len(job.works)))

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
