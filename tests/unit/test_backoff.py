"""The shared retry schedule (gateway/backoff.py) that the router, the webhook dispatcher and
the engines' polling wait on."""

from __future__ import annotations

import pytest

from gateway.backoff import equal_jitter, exponential_step


def test_steps_grow_by_the_factor_from_the_first_and_stop_at_the_cap() -> None:
    assert [exponential_step(10.0, 3.0, n, 300.0) for n in range(5)] == [10.0, 30.0, 90.0, 270.0, 300.0]
    assert [exponential_step(0.05, 2.0, n, 2.0) for n in range(3)] == [0.05, 0.1, 0.2]


def test_a_step_far_past_floats_range_is_the_cap_not_an_overflow() -> None:
    with pytest.raises(OverflowError):
        _ = 1.5**5000  # what a plain power would do after hours of polling
    assert exponential_step(1.0, 1.5, 5000, 10.0) == 10.0


def test_a_zero_first_step_never_waits() -> None:
    assert exponential_step(0.0, 2.0, 5000, 10.0) == 0.0


@pytest.mark.parametrize(("unit", "expected"), [(0.0, 5.0), (0.5, 7.5), (1.0, 10.0)])
def test_equal_jitter_spreads_a_step_over_its_upper_half(unit: float, expected: float) -> None:
    assert equal_jitter(10.0, unit) == expected
