"""Test harness: one PostgreSQL per run, migrations applied once into a template, a fresh copy per test.

Set GATEWAY_TEST_DATABASE_URL to use an existing server instead of the embedded one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit
from uuid import uuid4

import asyncpg
import pytest

from gateway.db.embedded import start_embedded
from gateway.db.migrations import apply_migrations

TEMPLATE = "gateway_template"


def with_database(url: str, database: str) -> str:
    """The same server URL pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


@pytest.fixture(scope="session")
def pg_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("GATEWAY_TEST_DATABASE_URL")
    if url:
        yield url
        return
    embedded = start_embedded(tmp_path_factory.mktemp("embedded"))
    try:
        yield embedded.uri
    finally:
        embedded.stop()


@pytest.fixture(scope="session")
async def template_database(pg_server_url: str) -> str:
    admin = await asyncpg.connect(pg_server_url)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {TEMPLATE}")
    finally:
        await admin.close()
    conn = await asyncpg.connect(with_database(pg_server_url, TEMPLATE))
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()
    return TEMPLATE


@contextlib.asynccontextmanager
async def _scratch_database(server_url: str, prefix: str, template: str | None) -> AsyncIterator[str]:
    """A new database on the test server (a copy of `template`, or empty), dropped afterwards."""
    name = f"{prefix}_{uuid4().hex[:16]}"
    clause = f" TEMPLATE {template}" if template else ""
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f"CREATE DATABASE {name}{clause}")
    finally:
        await admin.close()
    try:
        yield with_database(server_url, name)
    finally:
        admin = await asyncpg.connect(server_url)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await admin.close()


@pytest.fixture
async def database_url(pg_server_url: str, template_database: str) -> AsyncIterator[str]:
    """A fresh, migrated database for one test."""
    async with _scratch_database(pg_server_url, "gw", template_database) as url:
        yield url


@pytest.fixture
async def empty_database_url(pg_server_url: str) -> AsyncIterator[str]:
    """A fresh database with no migrations applied."""
    async with _scratch_database(pg_server_url, "gw_empty", None) as url:
        yield url


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


# -- the app against fake vendors -----------------------------------------------------------

from collections.abc import Awaitable, Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402
from uuid import UUID  # noqa: E402

from litestar import Litestar  # noqa: E402
from litestar.testing import AsyncTestClient  # noqa: E402

from gateway.app import create_app  # noqa: E402
from gateway.auth import tokens  # noqa: E402
from gateway.auth.keys import SCOPES  # noqa: E402
from gateway.config import load_settings  # noqa: E402
from gateway.db import billing as bq  # noqa: E402
from gateway.db import keys as kq  # noqa: E402

pytest_plugins = ["tests.fakes.plugin", "tests.timeouts"]

VENDOR_ENV = {"A2C_KEY": "test-key", "QOLABA_KEY": "test-key", "AITHRIVING_KEY": "test-key"}


@dataclass
class Gateway:
    """One app instance on a test database, with an operator key."""

    app: Litestar
    client: AsyncTestClient[Litestar]
    operator_key: str
    # The test's own pool: the app runs on the test client's event loop, so its pool is not ours.
    pool: Any
    extra: dict[str, Any] = field(default_factory=dict)

    async def tenant(
        self, credits: float = 100.0, scopes: list[str] | None = None, max_concurrent_jobs: int = 64
    ) -> tuple[UUID, str]:
        """A tenant with `credits` (as a top-up ledger entry) and one key; returns (id, key)."""
        tenant_id, key = uuid4(), tokens.new_key("tenant")
        async with self.pool.acquire() as conn, conn.transaction():
            await kq.insert_tenant(
                conn, tenant_id, f"tenant-{tenant_id.hex[:6]}", "whsec_dGVzdA==", max_concurrent_jobs
            )
            if credits:
                await bq.credit(
                    conn,
                    tenant_id=tenant_id,
                    kind="topup",
                    amount=round(credits * 1000),
                    reason="test",
                    operator_key_id=None,
                )
            await self._insert_key(conn, tenant_id, key, scopes=scopes or list(SCOPES))
        return tenant_id, key

    async def key(self, tenant_id: UUID, *, scopes: list[str] | None = None, **columns: Any) -> str:
        """Another key of the tenant; `columns` are insert_tenant_key's (rate_limit_per_minute, monthly_cap, ...)."""
        key = tokens.new_key("tenant")
        async with self.pool.acquire() as conn:
            await self._insert_key(conn, tenant_id, key, scopes=scopes or list(SCOPES), **columns)
        return key

    @staticmethod
    async def _insert_key(conn: Any, tenant_id: UUID, key: str, *, scopes: list[str], **columns: Any) -> None:
        await kq.insert_tenant_key(
            conn,
            key_id=uuid4(),
            tenant_id=tenant_id,
            name=columns.pop("name", "test"),
            scopes=scopes,
            secret_hash=tokens.hash_key(key),
            hint=tokens.hint(key),
            rate_limit_per_minute=columns.pop("rate_limit_per_minute", 100_000),
            **columns,
        )


def vendor_urls(api2convert: Any, qolaba: Any, aithriving: Any) -> dict[str, str]:
    """The fake vendors' base URLs by vendor, as gateway_settings takes them."""
    return {"api2convert": api2convert.base_url, "qolaba": qolaba.base_url, "aithriving": aithriving.base_url}


def gateway_settings(
    database_url: str,
    data_dir: Path,
    vendors: dict[str, str],
    environ: dict[str, str] | None = None,
    **overrides: Any,
) -> Any:
    engines = {
        "a2c": {
            "kind": "api2convert",
            "base_url": vendors["api2convert"],
            "api_key_env": "A2C_KEY",
            "poll_interval_s": 0.01,
            "max_poll_interval_s": 0.05,
            "timeout_s": 10,
        },
        "qolaba": {
            "kind": "qolaba",
            "base_url": vendors["qolaba"],
            "api_key_env": "QOLABA_KEY",
            "poll_interval_s": 0.01,
            "max_poll_interval_s": 0.05,
            "timeout_s": 10,
        },
        "ait": {
            "kind": "aithriving",
            "base_url": vendors["aithriving"],
            "api_key_env": "AITHRIVING_KEY",
            "timeout_s": 10,
        },
    }
    base: dict[str, Any] = {
        "database_url": database_url,
        "data_dir": str(data_dir),
        "demo_tenant": False,
        "engines": engines,
        "routes": {"text-to-image": ["a2c", "qolaba"], "image-to-image": ["ait"], "inpaint": ["a2c"]},
        "routing": {"backoff_base_s": 0.0, "backoff_max_s": 0.01},
        "fetch_allow_hosts": ["127.0.0.1"],
        "sync_wait_s": 20,
        "lease_s": 5,
        "db_pool_max": 30,
    }
    base.update(overrides)
    return load_settings({**VENDOR_ENV, **(environ or {})}, overrides=base)


@pytest.fixture
async def make_gateway(
    database_url: str, data_dir: Path, fake_api2convert: Any, fake_qolaba: Any, fake_aithriving: Any
) -> AsyncIterator[Callable[..., Awaitable[Gateway]]]:
    """Start app instances on the test database (several share it, like replicas)."""
    started: list[AsyncTestClient[Litestar]] = []
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=10)
    assert pool is not None
    vendors = vendor_urls(fake_api2convert, fake_qolaba, fake_aithriving)

    async def start(environ: dict[str, str] | None = None, **overrides: Any) -> Gateway:
        # `environ`: extra variables the settings resolve secrets from (e.g. S3 credentials).
        app = create_app(gateway_settings(database_url, data_dir, vendors, environ, **overrides))
        client: AsyncTestClient[Litestar] = AsyncTestClient(app, raise_server_exceptions=False)
        await client.__aenter__()
        started.append(client)
        operator_key = tokens.new_key("operator")
        async with pool.acquire() as conn:
            await kq.insert_operator_key(
                conn,
                key_id=uuid4(),
                name="test-operator",
                secret_hash=tokens.hash_key(operator_key),
                hint=tokens.hint(operator_key),
            )
        return Gateway(
            app=app,
            client=client,
            operator_key=operator_key,
            pool=pool,
            extra={"a2c": fake_api2convert, "qolaba": fake_qolaba, "ait": fake_aithriving},
        )

    yield start
    for client in reversed(started):
        await client.__aexit__(None, None, None)
    await pool.close()


@pytest.fixture
async def gateway(make_gateway: Callable[..., Awaitable[Gateway]]) -> Gateway:
    return await make_gateway()
