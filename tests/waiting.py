"""Waiting in tests for a condition, not for a guessed number of seconds.

A test that sleeps "long enough" for something to happen is slow when the machine is idle and
flaky when it is loaded. `eventually` looks at the condition at once, then again after pauses that
grow from a millisecond to a few, and returns as soon as it holds; only a condition that never comes
costs the whole timeout, and then the test fails saying what it waited for.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, overload

T = TypeVar("T")

_FIRST_PAUSE_S = 0.001
_LONGEST_PAUSE_S = 0.02


@overload
async def eventually(
    check: Callable[[], Coroutine[Any, Any, T | None]], *, timeout_s: float = ..., what: str = ...
) -> T: ...


@overload
async def eventually(check: Callable[[], T | None], *, timeout_s: float = ..., what: str = ...) -> T: ...


async def eventually(check: Callable[[], Any], *, timeout_s: float = 15.0, what: str = "the condition") -> Any:
    """The first truthy value of `check()` (awaited when it is awaitable), looked at until `timeout_s`
    has passed; then AssertionError naming `what` and the last value seen."""
    deadline = time.monotonic() + timeout_s
    pause = _FIRST_PAUSE_S
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for: {what} (last seen: {value!r})")
        await asyncio.sleep(pause)
        pause = min(pause * 2, _LONGEST_PAUSE_S)


def eventually_blocking(check: Callable[[], T], *, timeout_s: float = 15.0, what: str = "the condition") -> T:
    """`eventually` for code outside the event loop (a thread, a synchronous test): blocks between looks."""
    deadline = time.monotonic() + timeout_s
    pause = _FIRST_PAUSE_S
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for: {what} (last seen: {value!r})")
        time.sleep(pause)
        pause = min(pause * 2, _LONGEST_PAUSE_S)


async def run_ready_tasks(turns: int = 10) -> None:
    """Give the event loop `turns` turns: afterwards a task that could finish without waiting for
    anything (no I/O, no lock held elsewhere) has finished. For checking that something is still
    blocked, without guessing a time after which it "should" have finished."""
    for _ in range(turns):
        await asyncio.sleep(0)
