"""The engine contract, as reusable checks: every engine, run against a test server of its
backend, must pass each of them. Vendor engines run them against tests/fakes; the diffusion
engine can run them against a fake (or real) GPU service that implements `FaultControl`.

A check takes a `Subject`: the engine (built with short timeouts: request_timeout_s well under
a second, timeout_s around a second), the fault switches of its test server, and a factory of
valid sample requests for the operation under test.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from gateway.domain.generation import OPERATIONS, EngineRequest, EngineResult, Operation
from gateway.engines.base import (
    Engine,
    EngineCredentialsRefused,
    EngineRateLimited,
    EngineRejected,
    EngineTimeout,
    EngineUnavailable,
)
from gateway.engines.http import inspect_image
from tests.fakes.base import FaultControl


@dataclass
class Subject:
    """An engine under contract test."""

    engine: Engine
    control: FaultControl
    make_request: Callable[[Operation, int], EngineRequest]  # (operation, n) -> a valid request
    operation: Operation
    synchronous: bool = False  # no job to poll: slow_job does not apply
    progress: list[float] = field(default_factory=list)

    async def generate(self, n: int = 1) -> EngineResult:
        return await self.engine.generate(self.make_request(self.operation, n), self.progress.append)


async def check_capabilities_are_coherent(subject: Subject) -> None:
    """Capabilities name real operations, sane ranges, and accept the sample request."""
    caps = subject.engine.capabilities
    assert caps.operations <= set(OPERATIONS)
    assert subject.operation in caps.operations
    assert 0 < caps.min_side <= caps.max_side
    assert caps.min_steps <= caps.max_steps
    assert caps.min_guidance <= caps.max_guidance
    assert caps.max_n >= 1
    assert caps.check(subject.make_request(subject.operation, 1)) is None
    assert subject.engine.check_options({}) is None
    assert subject.engine.check_options({"surely_not_an_option": 1}) is not None


async def check_generates_requested_images(subject: Subject) -> None:
    """n images come back, indexed 0..n-1, each a decodable image of the declared type."""
    request = subject.make_request(subject.operation, 2)
    result = await subject.engine.generate(request, subject.progress.append)
    assert sorted(image.index for image in result.images) == [0, 1]
    assert result.failed == {}
    for image in result.images:
        info = inspect_image(image.data)
        assert info is not None
        assert info.media_type == image.media_type
        assert (image.width, image.height) == (info.width, info.height)
    assert all(0.0 <= fraction <= 1.0 for fraction in subject.progress)


async def check_generates_one_image(subject: Subject) -> None:
    """One image comes back, decodable (the check every reading of a vendor's pages must pass)."""
    result = await subject.generate(1)
    assert [image.index for image in result.images] == [0]
    assert inspect_image(result.images[0].data) is not None


async def check_credentials_refused_is_its_own_failure(subject: Subject) -> None:
    """A 401 on our key is the operator's problem: EngineCredentialsRefused (retryable elsewhere)."""
    subject.control.fail_with_status(401)
    with pytest.raises(EngineCredentialsRefused) as caught:
        await subject.generate()
    assert caught.value.retryable
    assert "refused our credentials" in caught.value.message


async def check_waits_for_a_slow_job(subject: Subject) -> None:
    """A job that needs several polls still yields its images."""
    subject.control.slow_job(4)
    result = await subject.generate()
    assert len(result.images) == 1


async def check_fewer_outputs_is_a_partial_result(subject: Subject) -> None:
    """Fewer images than asked is a result (not an error), naming the missing indexes."""
    subject.control.fewer_outputs(1)
    result = await subject.generate(3)
    assert len(result.images) == 1
    assert set(result.failed) == {0, 1, 2} - {image.index for image in result.images}


async def check_server_error_is_retryable(subject: Subject) -> None:
    """A 5xx is the engine failing: another engine may serve the request."""
    subject.control.fail_with_status(503)
    with pytest.raises(EngineUnavailable) as caught:
        await subject.generate()
    assert caught.value.retryable


async def check_rate_limit_carries_retry_after(subject: Subject) -> None:
    """A 429 becomes EngineRateLimited with the vendor's Retry-After in seconds."""
    subject.control.fail_with_status(429, retry_after="7")
    with pytest.raises(EngineRateLimited) as caught:
        await subject.generate()
    assert caught.value.retry_after == 7.0


async def check_bad_request_is_rejected(subject: Subject) -> None:
    """A 400 says the request itself is bad: no fallback."""
    subject.control.fail_with_status(400)
    with pytest.raises(EngineRejected) as caught:
        await subject.generate()
    assert not caught.value.retryable


async def check_hang_times_out(subject: Subject) -> None:
    """A backend that does not answer becomes EngineTimeout, within the engine's budget."""
    subject.control.hang(5.0)
    with pytest.raises(EngineTimeout):
        await subject.generate()


async def check_malformed_answer_is_unavailable(subject: Subject) -> None:
    """A 200 whose body is not the documented JSON is the engine failing, not a crash."""
    subject.control.malformed()
    with pytest.raises(EngineUnavailable):
        await subject.generate()


async def check_failed_job_is_unavailable(subject: Subject) -> None:
    """A job that fails on the backend's side is a retryable failure."""
    subject.control.fail_job()
    with pytest.raises(EngineUnavailable) as caught:
        await subject.generate()
    assert caught.value.retryable


async def check_polling_failure_is_retryable(subject: Subject) -> None:
    """An error while polling (after the job was accepted) is retryable too."""
    if subject.synchronous:
        return
    subject.control.fail_with_status(500, on="poll")
    with pytest.raises(EngineUnavailable):
        await subject.generate()


CHECKS: tuple[Callable[[Subject], Awaitable[None]], ...] = (
    check_capabilities_are_coherent,
    check_generates_requested_images,
    check_waits_for_a_slow_job,
    check_fewer_outputs_is_a_partial_result,
    check_server_error_is_retryable,
    check_rate_limit_carries_retry_after,
    check_bad_request_is_rejected,
    check_hang_times_out,
    check_malformed_answer_is_unavailable,
    check_failed_job_is_unavailable,
    check_polling_failure_is_retryable,
    check_credentials_refused_is_its_own_failure,
)
"""Every contract check, for `pytest.mark.parametrize`."""

READING_CHECKS: tuple[Callable[[Subject], Awaitable[None]], ...] = (
    check_generates_one_image,
    check_waits_for_a_slow_job,
    check_failed_job_is_unavailable,
    check_credentials_refused_is_its_own_failure,
)
"""The checks run again with the fake following each other reading of the vendor's pages."""
