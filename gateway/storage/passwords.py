"""Download passwords: stored only as argon2id hashes, verified off the event loop."""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

# OWASP's argon2id minimum: m=19 MiB, t=2, p=1.
_HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)

# At most this many candidates of one request are hashed (the value is a comma-separated list).
MAX_CANDIDATES = 10


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_HASHER.hash, password)


def _first_match(stored: str, candidates: list[str]) -> int | None:
    for index, candidate in enumerate(candidates):
        try:
            if _HASHER.verify(stored, candidate):
                return index
        except (VerificationError, InvalidHashError):
            continue
    return None


async def first_match(stored: str, candidates: list[str]) -> int | None:
    """The index of the first of `candidates` that matches `stored`, or None; each candidate before
    it was a wrong guess. The caller decides how many to try: every one costs an argon2id hash."""
    return await asyncio.to_thread(_first_match, stored, candidates[:MAX_CANDIDATES])
