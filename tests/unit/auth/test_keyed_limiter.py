"""Token buckets keyed by address or file: refill, costs, and a bounded, least-recently-used memory."""

from __future__ import annotations

from gateway.auth.limits import DownloadLimits, KeyedLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_key_spends_its_minute_then_waits_for_the_refill() -> None:
    clock = Clock()
    limiter = KeyedLimiter(6, clock=clock)  # one unit every 10 s
    for _ in range(6):
        assert limiter.take("10.0.0.1") == 0.0
    assert limiter.take("10.0.0.1") == 10.0
    assert limiter.take("10.0.0.2") == 0.0, "another key has its own budget"
    clock.now = 10.0
    assert limiter.take("10.0.0.1") == 0.0
    assert limiter.take("10.0.0.1", cost=2) == 20.0


def test_checking_remembers_nothing_and_only_spenders_take_a_place() -> None:
    limiter = KeyedLimiter(1, max_keys=2, clock=Clock())
    for n in range(100):
        assert limiter.wait_s(f"client-{n}") == 0.0
    assert len(limiter) == 0


def test_a_full_limiter_forgets_the_least_recently_used_key() -> None:
    limiter = KeyedLimiter(1, max_keys=2, clock=Clock())
    limiter.spend("a")
    limiter.spend("b")
    assert limiter.wait_s("a") > 0  # a is now the most recently used
    limiter.spend("c")  # full: b goes
    assert len(limiter) == 2
    assert limiter.wait_s("b") == 0.0
    assert limiter.wait_s("a") > 0
    assert limiter.wait_s("c") > 0


def test_download_limits_spend_both_budgets_or_neither() -> None:
    clock = Clock()
    limits = DownloadLimits(KeyedLimiter(10, clock=clock), KeyedLimiter(3, clock=clock))
    assert limits.take("client", "file-1", 3) == 0.0
    assert limits.take("client", "file-1", 1) > 0, "the file's budget is spent"
    assert limits.per_client.wait_s("client", 7) == 0.0, "a refused take spent nothing of the client's"
    assert limits.take("client", "file-2", 3) == 0.0
