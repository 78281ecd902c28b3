"""A real gateway on 127.0.0.1 (uvicorn, against the test database and the fake vendors) and headless
Debian chromium driven by playwright.

Chromium is not downloaded by playwright: scripts/test installs Debian's package, and a missing
browser fails the tests with that instruction rather than skipping them.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
import uvicorn
from playwright.async_api import Browser, Page, async_playwright

from gateway.app import create_app
from gateway.auth import service
from gateway.db.pool import Pool, create_pool
from tests.conftest import gateway_settings

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"


@dataclass
class LiveGateway:
    """The gateway served over real HTTP, its database pool (the test's own) and an operator key."""

    base_url: str
    pool: Pool
    operator_key: str
    fakes: dict[str, Any]

    async def tenant(self, name: str, credits: int) -> tuple[UUID, str]:
        """A tenant made as `gateway tenants create` makes it: wallet topped up, first key with every scope."""
        async with self.pool.acquire() as conn, conn.transaction():
            tenant_id, key = await service.create_tenant(conn, name=name, credits=credits * 1000)
        return tenant_id, key.key

    def api(self, key: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


class UvicornThread:
    """uvicorn with the app's own lifespan, on an ephemeral port, in a thread with its own event loop."""

    def __init__(self, app: Any) -> None:
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, lifespan="on", log_level="warning", ws="none", http="h11", loop="asyncio"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="dashboard-gateway", daemon=True)

    def start(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the gateway did not start; see the captured log")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture
async def live_gateway(
    database_url: str, data_dir: Path, fake_api2convert: Any, fake_qolaba: Any, fake_aithriving: Any
) -> AsyncIterator[LiveGateway]:
    vendors = {
        "api2convert": fake_api2convert.base_url,
        "qolaba": fake_qolaba.base_url,
        "aithriving": fake_aithriving.base_url,
    }
    server = UvicornThread(create_app(gateway_settings(database_url, data_dir, vendors)))
    base_url = server.start()
    pool = await create_pool(database_url, min_size=1, max_size=4, statement_cache_size=100)
    try:
        async with pool.acquire() as conn:
            operator = await service.create_operator_key(conn, name="dashboard-test")
        yield LiveGateway(
            base_url=base_url,
            pool=pool,
            operator_key=operator.key,
            fakes={"a2c": fake_api2convert, "qolaba": fake_qolaba, "ait": fake_aithriving},
        )
    finally:
        await pool.close()
        server.stop()


@pytest.fixture(scope="session")
def chromium_path() -> str:
    if not (Path(CHROMIUM).exists() and shutil.which("chromium")):
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests need Debian's chromium package "
            "(scripts/test installs it: apt-get install -y chromium). Never `playwright install`."
        )
    return CHROMIUM


@pytest.fixture(scope="session")
async def browser(chromium_path: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def screenshot(page: Page, name: str) -> None:
    """Kept under test-artifacts/dashboard/ (gitignored) for people to look at."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def sign_in_by_keyboard(page: Page, base_url: str, key: str) -> None:
    """Open the dashboard, land on the sign-in form, type the key into its labelled field, press Enter."""
    await page.goto(f"{base_url}/dashboard")
    assert page.url == f"{base_url}/dashboard/sign-in"
    field = page.get_by_label("API key")
    await field.focus()
    await page.keyboard.type(key)
    async with page.expect_navigation():
        await page.keyboard.press("Enter")
