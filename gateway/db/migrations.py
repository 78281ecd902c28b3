"""Forward-only SQL migrations: `migrations/NNNN_name.sql`, each in its own transaction.

The files ship inside the package: `gateway/db/migration_files` is a link to the repository's
top-level `migrations/` (the one place they are written), and building a wheel copies them in, so
an installed gateway (no checkout beside it) migrates as a source checkout does.

Applied files are recorded with a SHA-256 checksum; an applied file that was edited since is
refused. A transaction-level advisory lock serializes concurrent starts of several replicas.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable

from gateway.db import Conn

log = logging.getLogger(__name__)

MIGRATIONS_DIR: Traversable = files("gateway.db") / "migration_files"
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# Arbitrary constant: the key of the advisory lock every replica takes while migrating.
_LOCK_KEY = 7_412_903_551


class MigrationError(Exception):
    """The migrations on disk and in the database disagree."""


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(directory: Traversable = MIGRATIONS_DIR) -> list[Migration]:
    """The migration files in order; a misnamed or duplicate-numbered file is an error."""
    if not directory.is_dir():
        raise MigrationError(f"{directory}: no migrations folder (a package built without its SQL files?)")
    migrations: list[Migration] = []
    seen: dict[str, str] = {}
    for path in sorted((p for p in directory.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name):
        match = _NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNNN_lowercase_name.sql")
        if match.group(1) in seen:
            raise MigrationError(f"{path.name} and {seen[match.group(1)]} share the number {match.group(1)}")
        seen[match.group(1)] = path.name
        migrations.append(Migration(path.name, path.read_text(encoding="utf-8")))
    return migrations


_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name        text PRIMARY KEY,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


async def apply_migrations(conn: Conn, directory: Traversable = MIGRATIONS_DIR) -> list[str]:
    """Apply what is pending; return the names applied. Safe to call from many replicas at once.

    Each file's transaction first takes a transaction-scoped advisory lock, then re-reads whether
    the file is applied, so concurrent starts apply each file once. A transaction-scoped lock (not
    a session lock) also holds behind PgBouncer in transaction mode, where a session lock could be
    taken on one server connection and "released" on another, leaving it held forever.
    """
    migrations = discover(directory)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await conn.execute(_CREATE_TABLE)
    done: list[str] = []
    for migration in migrations:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
            recorded = await conn.fetchval("SELECT checksum FROM schema_migrations WHERE name = $1", migration.name)
            if recorded is not None:
                if recorded != migration.checksum:
                    raise MigrationError(
                        f"{migration.name} was edited after it was applied "
                        f"(applied checksum {recorded[:12]}, file now {migration.checksum[:12]}); "
                        "migrations are forward only: add a new file instead"
                    )
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)", migration.name, migration.checksum
            )
        log.info("applied migration %s", migration.name)
        done.append(migration.name)
    return done


async def pending_migrations(conn: Conn, directory: Traversable = MIGRATIONS_DIR) -> list[str]:
    """Names of migrations on disk that the database has not applied (for /readyz)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    applied: set[str] = set()
    if exists:
        applied = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
    return [m.name for m in discover(directory) if m.name not in applied]
