"""The asyncpg pool as PgBouncer in transaction mode needs it: no statement outlives its transaction."""

from __future__ import annotations

from gateway.db.pool import create_pool


async def _named_statements_after_queries(database_url: str, statement_cache_size: int) -> int:
    pool = await create_pool(database_url, min_size=1, max_size=1, statement_cache_size=statement_cache_size)
    try:
        async with pool.acquire() as conn:
            for value in range(3):
                assert await conn.fetchval("SELECT $1::int + 1", value) == value + 1
            # jsonb goes through the msgspec codec the pool installs, also without a statement cache.
            assert await conn.fetchval("SELECT $1::jsonb", {"a": [1, 2]}) == {"a": [1, 2]}
            count: int = await conn.fetchval("SELECT count(*) FROM pg_prepared_statements")
            return count
    finally:
        await pool.close()


async def test_without_a_statement_cache_no_prepared_statement_stays_on_the_server(database_url: str) -> None:
    # Behind PgBouncer (transaction mode) the next transaction may run on another server
    # connection, where a named statement prepared here does not exist.
    assert await _named_statements_after_queries(database_url, statement_cache_size=0) == 0


async def test_with_the_default_cache_statements_are_kept_prepared_on_the_server(database_url: str) -> None:
    # The contrast that makes the test above meaningful: the cache is what leaves them there.
    assert await _named_statements_after_queries(database_url, statement_cache_size=100) > 0


async def test_settings_in_the_database_url_become_session_settings(database_url: str) -> None:
    # docs/production.md offers `?synchronous_commit=off` on GATEWAY_DATABASE_URL for throughput.
    separator = "&" if "?" in database_url else "?"
    pool = await create_pool(
        f"{database_url}{separator}synchronous_commit=off", min_size=1, max_size=1, statement_cache_size=0
    )
    try:
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW synchronous_commit") == "off"
    finally:
        await pool.close()
    pool = await create_pool(database_url, min_size=1, max_size=1, statement_cache_size=0)
    try:
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW synchronous_commit") == "on"
    finally:
        await pool.close()
