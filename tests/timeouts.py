"""A pytest plugin (listed in tests/conftest.py): what a test that ran past its time limit was waiting for.

pytest-timeout's `signal` method (pyproject's `timeout_method`) fails the test from a SIGALRM
handler and the run goes on, but in an asyncio test the stack it shows ends in the event loop's
`select()`: every coroutine is suspended, so none is on the stack. This adds to that failure (as
captured stderr) each task of the running loop with the chain of awaits it is suspended in,
innermost last.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import traceback
from collections.abc import Iterator
from types import FrameType
from typing import Any

import pytest


def _awaits(coro: Any) -> Iterator[FrameType]:
    """The frames of `coro` and of what it awaits, down the chain."""
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None) or getattr(coro, "ag_frame", None)
        if frame is not None:
            yield frame
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None) or getattr(coro, "ag_await", None)


def print_tasks(file: Any = None) -> None:
    """Each task of the running loop (none outside one) and where it waits."""
    out = file if file is not None else sys.stderr
    try:
        tasks = asyncio.all_tasks()
    except RuntimeError:
        return
    for task in sorted(tasks, key=lambda t: t.get_name()):
        frames = [(frame, frame.f_lineno) for frame in _awaits(task.get_coro())]
        print(f"--- {task!r:.200}", file=out)
        print("".join(traceback.StackSummary.extract(frames).format()), end="", file=out)


def show_tasks_on_timeout() -> None:
    """Wrap the SIGALRM handler pytest-timeout just installed (signal method) so it prints the
    event loop's tasks before failing the test; with the thread method there is none to wrap."""
    handler = signal.getsignal(signal.SIGALRM)
    if not callable(handler):
        return

    def first_the_tasks(signum: int, frame: FrameType | None) -> Any:
        __tracebackhide__ = True
        print_tasks()
        return handler(signum, frame)

    signal.signal(signal.SIGALRM, first_the_tasks)


@pytest.hookimpl(hookwrapper=True, optionalhook=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> Iterator[None]:
    """After pytest-timeout has set its timer for `item`, wrap its handler (see the module's docstring)."""
    del item, settings
    yield
    show_tasks_on_timeout()
