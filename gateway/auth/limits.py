"""Rate limits keyed by something other than a key: a client address, a file.

Each key gets a token bucket; at most `max_keys` buckets are remembered, the least recently used
dropped first, so a flood of distinct addresses costs bounded memory and forgets only idle ones.
The limits are per process: with several replicas, each enforces its own.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

DEFAULT_MAX_KEYS = 10_000


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass
class KeyedLimiter:
    """`per_minute` units per key, refilled continuously, with a burst of one minute's worth."""

    per_minute: float
    max_keys: int = DEFAULT_MAX_KEYS
    clock: Callable[[], float] = time.monotonic
    _buckets: OrderedDict[str, _Bucket] = field(default_factory=OrderedDict)

    def _bucket(self, key: str, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(self.per_minute, now)
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            rate = self.per_minute / 60.0
            bucket.tokens = min(self.per_minute, bucket.tokens + (now - bucket.updated) * rate)
            bucket.updated = now
        return bucket

    def wait_s(self, key: str, cost: float = 1.0) -> float:
        """Seconds until `key` can spend `cost` units (0: it can now). Spends nothing, and remembers
        nothing for a key that never spent: only spenders take a place among the `max_keys`."""
        if key not in self._buckets:
            return 0.0
        bucket = self._bucket(key, self.clock())
        missing = min(cost, self.per_minute) - bucket.tokens
        return 0.0 if missing <= 0 else missing * 60.0 / self.per_minute

    def spend(self, key: str, cost: float = 1.0) -> None:
        """Spend `cost` units of `key` (the balance may go below zero: a debt waited off later)."""
        self._bucket(key, self.clock()).tokens -= cost

    def take(self, key: str, cost: float = 1.0) -> float:
        """Spend `cost` units of `key` when it has them and return 0; otherwise spend nothing and
        return the seconds to wait."""
        wait = self.wait_s(key, cost)
        if wait == 0.0:
            self.spend(key, cost)
        return wait

    def __len__(self) -> int:
        return len(self._buckets)


# Password hashes (argon2id: 19 MiB, tens of milliseconds of CPU each) per minute that downloads
# may cost, per client address and per file: wrong guesses are capped by the lockout, but a known
# password could otherwise be hashed as fast as requests arrive.
HASHES_PER_MINUTE_PER_CLIENT = 30
HASHES_PER_MINUTE_PER_FILE = 30


@dataclass
class DownloadLimits:
    """What `/v1/files/{id}` and `files.zip` may hash, checked before any hashing."""

    per_client: KeyedLimiter = field(default_factory=lambda: KeyedLimiter(HASHES_PER_MINUTE_PER_CLIENT))
    per_file: KeyedLimiter = field(default_factory=lambda: KeyedLimiter(HASHES_PER_MINUTE_PER_FILE))

    def take(self, client: str, file: str, hashes: int) -> float:
        """Spend `hashes` of both the client's and the file's budget and return 0, or spend nothing
        and return the seconds until both have enough. Nothing awaits in between, so concurrent
        requests on one event loop cannot both pass on the same budget."""
        wait = max(self.per_client.wait_s(client, hashes), self.per_file.wait_s(file, hashes))
        if wait == 0.0:
            self.per_client.spend(client, hashes)
            self.per_file.spend(file, hashes)
        return wait
