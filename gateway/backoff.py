"""Retry schedules: a capped exponential step, and "equal jitter" on top of it.

The router (between engine attempts), the webhook dispatcher (between deliveries), the engines'
job polling and the worker's retries after a database outage all wait on the same shape of
schedule, each with its own base, growth and cap: the n-th wait (from 0) is `first * growth**n`,
never above the cap. Retries that many callers make at once (webhooks, fallbacks) are jittered:
a step s becomes s/2 + u * s/2 for u uniform in [0, 1], so they spread out yet never come
sooner than half the schedule (AWS's "Exponential Backoff And Jitter"). Callers draw u
themselves, so a test can pin it.
"""

from __future__ import annotations


def exponential_step(first_s: float, growth: float, n: int, cap_s: float) -> float:
    """The n-th wait (from 0) of a schedule starting at `first_s` and multiplied by `growth`
    each time, capped at `cap_s`.

    Polling can go on for thousands of steps: a power past float's range is the cap, not an
    OverflowError."""
    if first_s == 0:
        return 0.0
    try:
        step = first_s * growth**n
    except OverflowError:
        return cap_s
    return min(cap_s, step)


def equal_jitter(step_s: float, unit_random: float) -> float:
    """`step_s` jittered into [step_s/2, step_s] by `unit_random` in [0, 1]."""
    half = step_s / 2
    return half + unit_random * half
