"""Download passwords: stored only as argon2id hashes, verified off the event loop."""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

# OWASP's argon2id minimum: m=19 MiB, t=2, p=1.
_HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_HASHER.hash, password)


def _matches_any(stored: str, candidates: list[str]) -> bool:
    for candidate in candidates:
        try:
            if _HASHER.verify(stored, candidate):
                return True
        except (VerificationError, InvalidHashError):
            continue
    return False


async def verify_any(stored: str, candidates: list[str]) -> bool:
    """Whether any of `candidates` (a comma-separated list the client sent, split) matches."""
    return await asyncio.to_thread(_matches_any, stored, candidates[:10])
