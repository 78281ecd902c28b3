"""Fixtures for the key and tenant services: a pool on a fresh database, an authenticator on it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.auth.keys import KeyAuthenticator
from gateway.db.pool import Pool, create_pool


@pytest.fixture
async def auth_pool(database_url: str) -> AsyncIterator[Pool]:
    pool = await create_pool(database_url, min_size=1, max_size=4, statement_cache_size=100)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
def authenticator(auth_pool: Pool) -> KeyAuthenticator:
    """No lookup cache (TTL 0): each call sees the database as it is now."""
    return KeyAuthenticator(pool=auth_pool, ttl_s=0.0)
