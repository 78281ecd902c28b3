"""The batcher's grouping, splitting and failure handling, with a fake runner (no torch)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from gateway.gpu.batcher import Batcher
from gateway.gpu.work import Batch, BatchKey, DeviceOutOfMemory, ImageWork, StepCallback
from tests.waiting import eventually

KEY = BatchKey("text-to-image", 64, 64, 4, "euler", 7.0, None, False)


def works(n: int, seed: int = 0, prompt: str = "p") -> list[ImageWork]:
    return [ImageWork(prompt=prompt, negative_prompt=None, seed=seed + i, output_format="png") for i in range(n)]


class FakeRunner:
    """Encodes each image as "prompt/seed"; records batch sizes and the threads of each stage;
    can fail above a size."""

    def __init__(self, *, oom_above: int | None = None, delay_s: float = 0.0, steps: int = 4) -> None:
        self.calls: list[list[ImageWork]] = []
        self.threads: dict[str, list[str]] = {"denoise": [], "decode": [], "encode": []}
        self.oom_above = oom_above
        self.delay_s = delay_s
        self.steps = steps
        self.gate = threading.Event()
        self.gate.set()

    def denoise(self, batch: Batch, on_step: StepCallback) -> list[str]:
        self.threads["denoise"].append(threading.current_thread().name)
        self.gate.wait(5)
        if self.oom_above is not None and len(batch.works) > self.oom_above:
            raise DeviceOutOfMemory("fake")
        self.calls.append(list(batch.works))
        for step in range(1, self.steps + 1):
            threading.Event().wait(self.delay_s / self.steps)
            on_step(step, self.steps)
        return [f"{w.prompt}/{w.seed}" for w in batch.works]

    def decode(self, denoised: list[str]) -> list[str]:
        self.threads["decode"].append(threading.current_thread().name)
        return denoised

    def encode(self, image: str, output_format: str) -> bytes:
        self.threads["encode"].append(threading.current_thread().name)
        return image.encode()

    def is_fatal(self, exc: BaseException) -> bool:
        return "illegal memory access" in str(exc)


def decoded(images: dict[int, bytes]) -> list[str]:
    return [images[i].decode() for i in sorted(images)]


async def test_concurrent_compatible_requests_share_one_pipeline_call() -> None:
    runner = FakeRunner()
    batcher = Batcher(runner, max_batch=8, window_s=0.05)
    outcomes = await asyncio.gather(
        *(batcher.submit(KEY, works(2, seed=10 * r, prompt=f"r{r}"), lambda f: None) for r in range(3))
    )
    assert batcher.stats.pipeline_calls == 1
    assert batcher.stats.images == 6
    assert [decoded(o.images) for o in outcomes] == [["r0/0", "r0/1"], ["r1/10", "r1/11"], ["r2/20", "r2/21"]]
    await batcher.aclose()


async def test_incompatible_requests_run_in_separate_calls() -> None:
    runner = FakeRunner()
    batcher = Batcher(runner, max_batch=8, window_s=0.05)
    other_steps = BatchKey("text-to-image", 64, 64, 8, "euler", 7.0, None, False)
    other_size = BatchKey("text-to-image", 64, 128, 4, "euler", 7.0, None, False)
    await asyncio.gather(
        batcher.submit(KEY, works(1), lambda f: None),
        batcher.submit(other_steps, works(1), lambda f: None),
        batcher.submit(other_size, works(1), lambda f: None),
        batcher.submit(KEY, works(1, seed=5), lambda f: None),
    )
    assert sorted(len(c) for c in runner.calls) == [1, 1, 2]
    await batcher.aclose()


async def test_requests_larger_than_max_batch_are_spread_over_calls() -> None:
    runner = FakeRunner()
    batcher = Batcher(runner, max_batch=3, window_s=0.0)
    outcome = await batcher.submit(KEY, works(7), lambda f: None)
    assert [len(c) for c in runner.calls] == [3, 3, 1]
    assert decoded(outcome.images) == [f"p/{i}" for i in range(7)]
    await batcher.aclose()


async def test_requests_arriving_during_a_batch_form_the_next_batch() -> None:
    runner = FakeRunner()
    runner.gate.clear()
    batcher = Batcher(runner, max_batch=8, window_s=0.0)
    first = asyncio.create_task(batcher.submit(KEY, works(1), lambda f: None))
    await eventually(lambda: runner.threads["denoise"], what="the first batch blocked inside the runner")
    rest = [asyncio.create_task(batcher.submit(KEY, works(1, seed=s), lambda f: None)) for s in (1, 2, 3)]
    await eventually(lambda: batcher.queue_depth == 3, what="three images queued")
    assert batcher.in_flight == 1
    runner.gate.set()
    await asyncio.gather(first, *rest)
    assert [len(c) for c in runner.calls] == [1, 3]
    await batcher.aclose()


async def test_out_of_memory_splits_the_batch_in_halves_until_it_fits() -> None:
    runner = FakeRunner(oom_above=2)
    batcher = Batcher(runner, max_batch=8, window_s=0.05)
    a, b = await asyncio.gather(
        batcher.submit(KEY, works(3, prompt="a"), lambda f: None),
        batcher.submit(KEY, works(3, seed=100, prompt="b"), lambda f: None),
    )
    assert all(len(c) <= 2 for c in runner.calls)
    assert batcher.stats.oom_splits >= 1
    assert decoded(a.images) == ["a/0", "a/1", "a/2"]
    assert decoded(b.images) == ["b/100", "b/101", "b/102"]
    await batcher.aclose()


async def test_a_single_image_that_does_not_fit_fails_alone() -> None:
    runner = FakeRunner(oom_above=0)
    batcher = Batcher(runner, max_batch=8, window_s=0.0)
    outcome = await batcher.submit(KEY, works(2), lambda f: None)
    assert outcome.images == {}
    assert outcome.failed == {0: "out of device memory", 1: "out of device memory"}
    await batcher.aclose()


async def test_progress_is_reported_per_request_and_reaches_one() -> None:
    runner = FakeRunner(steps=4)
    batcher = Batcher(runner, max_batch=2, window_s=0.0)
    seen: list[float] = []
    await batcher.submit(KEY, works(4), seen.append)
    await asyncio.sleep(0)  # let the last call_soon_threadsafe callback run
    assert seen == sorted(seen)
    assert seen[0] == pytest.approx(0.125)
    assert seen[-1] == pytest.approx(1.0)
    await batcher.aclose()


async def test_device_time_is_shared_by_image_count() -> None:
    runner = FakeRunner(delay_s=0.08)
    batcher = Batcher(runner, max_batch=8, window_s=0.05)
    one, three = await asyncio.gather(
        batcher.submit(KEY, works(1), lambda f: None), batcher.submit(KEY, works(3, seed=9), lambda f: None)
    )
    assert three.gpu_seconds == pytest.approx(3 * one.gpu_seconds)
    assert one.gpu_seconds > 0
    await batcher.aclose()


async def test_a_cancelled_request_is_not_generated() -> None:
    runner = FakeRunner()
    runner.gate.clear()
    batcher = Batcher(runner, max_batch=1, window_s=0.0)
    running = asyncio.create_task(batcher.submit(KEY, works(1), lambda f: None))
    await eventually(lambda: runner.threads["denoise"], what="the first batch blocked inside the runner")
    abandoned = asyncio.create_task(batcher.submit(KEY, works(1, seed=7), lambda f: None))
    await eventually(lambda: batcher.queue_depth == 1, what="the second request queued")
    abandoned.cancel()
    runner.gate.set()
    await running
    # Idle: nothing waits and nothing runs, so the abandoned request was either dropped or already made.
    await eventually(lambda: batcher.idle, what="the batcher idle")
    assert [w.seed for call in runner.calls for w in call] == [0]
    await batcher.aclose()


async def test_a_runner_crash_fails_the_batch_and_the_batcher_lives_on() -> None:
    class Crashing(FakeRunner):
        def denoise(self, batch: Batch, on_step: StepCallback) -> list[str]:
            if batch.works[0].prompt == "boom":
                raise RuntimeError("a bug")
            return super().denoise(batch, on_step)

    batcher = Batcher(Crashing(), max_batch=8, window_s=0.0)
    failed = await batcher.submit(KEY, works(1, prompt="boom"), lambda f: None)
    assert failed.failed == {0: "generation failed (RuntimeError)"}
    ok = await batcher.submit(KEY, works(1), lambda f: None)
    assert decoded(ok.images) == ["p/0"]
    await batcher.aclose()


async def test_empty_requests_need_no_device() -> None:
    runner = FakeRunner()
    batcher = Batcher(runner, max_batch=8, window_s=0.0)
    outcome = await batcher.submit(KEY, [], lambda f: None)
    assert outcome.images == {}
    assert outcome.failed == {}
    assert runner.calls == []


async def test_every_batch_denoises_on_the_one_gpu_thread_and_decodes_on_another() -> None:
    runner = FakeRunner()
    batcher = Batcher(runner, max_batch=1, window_s=0.0)
    await asyncio.gather(*(batcher.submit(KEY, works(1, seed=s), lambda f: None) for s in range(5)))
    # Input decoding and other blocking work of the service use the default pool, never this thread.
    default_pool = await asyncio.to_thread(lambda: threading.current_thread().name)
    assert len(runner.threads["denoise"]) == 5
    assert len(set(runner.threads["denoise"])) == 1
    assert runner.threads["denoise"][0].startswith("gpu_")
    assert set(runner.threads["decode"]) == {runner.threads["decode"][0]}
    assert runner.threads["decode"][0].startswith("gpu-decode")
    assert default_pool not in runner.threads["denoise"] + runner.threads["decode"]
    assert not set(runner.threads["encode"]) & set(runner.threads["denoise"])
    await batcher.aclose()


async def test_the_next_batch_denoises_while_the_previous_one_is_still_decoding() -> None:
    decoding = threading.Event()
    release = threading.Event()

    class SlowDecode(FakeRunner):
        def decode(self, denoised: list[str]) -> list[str]:
            decoding.set()
            release.wait(5)
            return super().decode(denoised)

    runner = SlowDecode()
    batcher = Batcher(runner, max_batch=1, window_s=0.0)
    first = asyncio.create_task(batcher.submit(KEY, works(1, prompt="a"), lambda f: None))
    second = asyncio.create_task(batcher.submit(KEY, works(1, prompt="b"), lambda f: None))
    assert await asyncio.to_thread(decoding.wait, 5)
    # The second denoise runs while the first decode is still blocked.
    await eventually(lambda: len(runner.calls) == 2, what="the second batch denoised")
    assert [c[0].prompt for c in runner.calls] == ["a", "b"]
    assert not first.done()
    release.set()
    assert decoded((await first).images) == ["a/0"]
    assert decoded((await second).images) == ["b/0"]
    await batcher.aclose()


async def test_a_device_fault_fails_queued_work_and_reports_once() -> None:
    faults: list[str] = []

    class Faulting(FakeRunner):
        def denoise(self, batch: Batch, on_step: StepCallback) -> list[str]:
            if batch.works[0].prompt == "boom":
                self.gate.wait(5)
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            return super().denoise(batch, on_step)

    runner = Faulting()
    runner.gate.clear()
    batcher = Batcher(runner, max_batch=1, window_s=0.0, on_fault=faults.append)
    boom = asyncio.create_task(batcher.submit(KEY, works(1, prompt="boom"), lambda f: None))
    await eventually(lambda: batcher.in_flight == 1, what="the faulting batch handed to the runner")
    queued = asyncio.create_task(batcher.submit(KEY, works(2), lambda f: None))
    await eventually(lambda: batcher.queue_depth == 2, what="the next request queued")
    runner.gate.set()
    assert (await boom).failed == {0: "device failure"}
    assert (await queued).failed == {0: "device failure", 1: "device failure"}
    assert len(faults) == 1
    assert "illegal memory access" in faults[0]
    later = await batcher.submit(KEY, works(1), lambda f: None)
    assert later.failed == {0: "device failure"}
    assert runner.calls == []
    await batcher.aclose()


async def test_the_batch_limit_can_differ_per_resolution() -> None:
    runner = FakeRunner()
    large = BatchKey("text-to-image", 1024, 1024, 4, "euler", 7.0, None, False)
    batcher = Batcher(runner, max_batch=8, window_s=0.0, limit_for=lambda key: 2 if key.width == 1024 else 8)
    await batcher.submit(large, works(5), lambda f: None)
    await batcher.submit(KEY, works(5), lambda f: None)
    assert [len(c) for c in runner.calls] == [2, 2, 1, 5]
    await batcher.aclose()
