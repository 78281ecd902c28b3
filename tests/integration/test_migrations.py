"""The migration runner against a real PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from gateway.db.migrations import MIGRATIONS_DIR, MigrationError, apply_migrations, discover, pending_migrations

SNAPSHOT = Path(__file__).parent / "schema_snapshot.txt"

SCHEMA_QUERY = """
SELECT table_name || '.' || column_name || ' ' || data_type || CASE WHEN is_nullable = 'NO' THEN ' not null' ELSE '' END
FROM information_schema.columns WHERE table_schema = 'public'
UNION ALL
SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = 'public'
UNION ALL
SELECT 'constraint ' || conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
FROM pg_constraint WHERE connamespace = 'public'::regnamespace
ORDER BY 1
"""


async def _schema(url: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        return "\n".join(r[0] for r in await conn.fetch(SCHEMA_QUERY)) + "\n"
    finally:
        await conn.close()


async def test_migrations_produce_the_committed_schema_snapshot(empty_database_url: str) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        applied = await apply_migrations(conn)
    finally:
        await conn.close()
    assert applied == [m.name for m in discover()]
    schema = await _schema(empty_database_url)
    if not SNAPSHOT.exists():  # first run writes it; review and commit it
        SNAPSHOT.write_text(schema)
    assert schema == SNAPSHOT.read_text(), "schema drifted: review and regenerate tests/integration/schema_snapshot.txt"


async def test_concurrent_starts_apply_each_migration_once(empty_database_url: str) -> None:
    conns = [await asyncpg.connect(empty_database_url) for _ in range(4)]
    try:
        results = await asyncio.gather(*(apply_migrations(c) for c in conns))
        applied = [name for result in results for name in result]
        assert sorted(applied) == sorted(m.name for m in discover())
        assert await conns[0].fetchval("SELECT count(*) FROM schema_migrations") == len(discover())
    finally:
        for c in conns:
            await c.close()


async def test_an_edited_applied_migration_is_refused(empty_database_url: str, tmp_path: Path) -> None:
    for path in MIGRATIONS_DIR.iterdir():
        (tmp_path / path.name).write_text(path.read_text())
    conn = await asyncpg.connect(empty_database_url)
    try:
        await apply_migrations(conn, tmp_path)
        first = sorted(tmp_path.glob("*.sql"))[0]
        first.write_text(first.read_text() + "\n-- edited\n")
        with pytest.raises(MigrationError, match="was edited after it was applied"):
            await apply_migrations(conn, tmp_path)
    finally:
        await conn.close()


async def test_pending_migrations_lists_unapplied_files(empty_database_url: str) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        assert await pending_migrations(conn) == [m.name for m in discover()]
        await apply_migrations(conn)
        assert await pending_migrations(conn) == []
    finally:
        await conn.close()
