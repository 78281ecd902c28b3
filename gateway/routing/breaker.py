"""A circuit breaker per engine: stop sending work to an engine that keeps failing.

It opens after `breaker_consecutive_failures` failures in a row, or when the error rate over
the last `breaker_window` outcomes (a full window) reaches `breaker_error_rate`. After
`breaker_open_s` it is half-open and lets exactly one probe through; the probe's success closes
it, its failure opens it again. Rejections (the request was bad) are no verdict on the engine.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Literal

from gateway.config import RoutingConfig

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """The breaker of one engine. Not thread-safe: it lives on one event loop."""

    def __init__(self, config: RoutingConfig, clock: Callable[[], float]) -> None:
        self._config = config
        self._clock = clock
        self._outcomes: deque[bool] = deque(maxlen=config.breaker_window)  # True = failure
        self._opened_at: float | None = None
        self._probing = False
        self.consecutive_failures = 0

    @property
    def state(self) -> BreakerState:
        """closed, open, or half_open (open for long enough that a probe may go through)."""
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self._config.breaker_open_s:
            return "half_open"
        return "open"

    @property
    def opened_at(self) -> float | None:
        """When (on the breaker's clock) it last opened; None while closed."""
        return self._opened_at

    @property
    def error_rate(self) -> float:
        """Failures over the outcomes in the window (0 when there are none)."""
        return sum(self._outcomes) / len(self._outcomes) if self._outcomes else 0.0

    def would_allow(self) -> bool:
        """Whether an attempt could go through now, without taking the probe slot."""
        state = self.state
        return state == "closed" or (state == "half_open" and not self._probing)

    def acquire(self) -> bool:
        """Take permission for one attempt; in half-open state only one caller gets it."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._probing:
            self._probing = True
            return True
        return False

    def record_success(self) -> None:
        """The engine produced images: close (a successful probe forgets the bad window)."""
        if self._opened_at is not None:
            self._outcomes.clear()
        self._opened_at = None
        self._probing = False
        self.consecutive_failures = 0
        self._outcomes.append(False)

    def record_failure(self) -> None:
        """The engine failed: count it, and open when a threshold is reached or the probe failed."""
        self.consecutive_failures += 1
        self._outcomes.append(True)
        probe_failed = self._probing
        self._probing = False
        window_full = len(self._outcomes) == self._outcomes.maxlen
        if (
            probe_failed
            or self.consecutive_failures >= self._config.breaker_consecutive_failures
            or (window_full and self.error_rate >= self._config.breaker_error_rate)
        ):
            self._opened_at = self._clock()

    def trip(self) -> None:
        """Open now, whatever the counts: a failure no retry can mend (the vendor refused our credentials)."""
        self.consecutive_failures += 1
        self._outcomes.append(True)
        self._probing = False
        self._opened_at = self._clock()

    def release(self) -> None:
        """The attempt gave no verdict (rejected or cut short): free the probe slot, change nothing."""
        self._probing = False
