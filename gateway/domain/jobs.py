"""Job states and their transitions (pure)."""

from __future__ import annotations

from typing import Literal

JobState = Literal["queued", "running", "succeeded", "failed", "canceled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})

# Which states may move to which. A job is admitted queued (async) or running (sync, run inline
# under its lease); a running job whose lease expired goes back to running under a new owner.
TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"running", "canceled", "failed"}),
    "running": frozenset({"running", "succeeded", "failed", "canceled"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "canceled": frozenset(),
}


def can_move(current: str, target: str) -> bool:
    """Whether `current -> target` is a legal transition."""
    return target in TRANSITIONS.get(current, frozenset())


def final_state(succeeded: int, cancel_requested: bool) -> JobState:
    """A finished run with `succeeded` images: canceled wins, then any image means success."""
    if cancel_requested:
        return "canceled"
    return "succeeded" if succeeded > 0 else "failed"
