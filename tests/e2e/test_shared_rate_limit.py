"""A key's rate limit holds across API processes: two `gateway serve` on one PostgreSQL share one bucket."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from uuid import uuid4

import asyncpg
import httpx

from gateway.auth import tokens
from gateway.db import keys as kq
from tests.e2e.processes import cluster
from tests.e2e.test_serve_processes import write_config
from tests.fakes.api2convert import FakeApi2Convert

LIMIT = 4  # per minute: one request back every 15 s, so a quick run sees no refill
INTERVAL_S = 60 / LIMIT


async def _key(database_url: str) -> str:
    key = tokens.new_key("tenant")
    tenant_id = uuid4()
    conn = await asyncpg.connect(database_url)
    try:
        await kq.insert_tenant(conn, tenant_id, "limited", "whsec_dGVzdA==", 4)
        await kq.insert_tenant_key(
            conn,
            key_id=uuid4(),
            tenant_id=tenant_id,
            name="limited",
            scopes=["jobs:read"],
            secret_hash=tokens.hash_key(key),
            hint=tokens.hint(key),
            rate_limit_per_minute=LIMIT,
        )
    finally:
        await conn.close()
    return key


async def test_two_api_processes_together_allow_a_key_only_its_limit(
    database_url: str, fake_api2convert: FakeApi2Convert, tmp_path: Path
) -> None:
    env = {
        "GATEWAY_CONFIG": str(write_config(tmp_path / "gateway.toml", fake_api2convert.base_url)),
        "GATEWAY_DATA_DIR": str(tmp_path / "data"),
        "GATEWAY_DATABASE_URL": database_url,
        "GATEWAY_DEMO_TENANT": "false",
        "A2C_KEY": fake_api2convert.api_key,
    }
    key = await _key(database_url)
    with cluster(env, tmp_path / "logs") as c:
        first, second = c.serve("api-1"), c.serve("api-2")
        await asyncio.gather(first.wait_ready(), second.wait_ready())
        async with httpx.AsyncClient() as client:
            started = time.monotonic()
            answers = []
            for i in range(3 * LIMIT):  # alternating: each process alone would allow LIMIT of its own
                replica = (first, second)[i % 2]
                response = await client.get(f"{replica.base_url}/v1/jobs", headers={"X-Api-Key": key})
                answers.append((replica.name, response))
            elapsed = time.monotonic() - started

    allowed = [(name, r) for name, r in answers if r.status_code == 200]
    refused = [(name, r) for name, r in answers if r.status_code == 429]
    assert len(allowed) + len(refused) == len(answers), [r.text for _, r in answers]
    # Continuous refill returns one request per INTERVAL_S: on a quick run, none.
    assert LIMIT <= len(allowed) <= LIMIT + math.floor(elapsed / INTERVAL_S), (elapsed, len(allowed))
    # The first LIMIT answers, from both processes in turn, count down one shared bucket.
    assert [r.headers["RateLimit-Remaining"] for _, r in answers[:LIMIT]] == [str(n) for n in range(LIMIT - 1, -1, -1)]
    assert {name for name, _ in allowed} == {name for name, _ in refused} == {"api-1", "api-2"}
    for _, response in refused:
        assert response.headers["RateLimit-Limit"] == str(LIMIT)
        assert response.headers["RateLimit-Remaining"] == "0"
        assert 1 <= int(response.headers["Retry-After"]) <= INTERVAL_S
        assert response.headers["RateLimit-Reset"] == response.headers["Retry-After"]
        assert response.headers["content-type"].startswith("application/problem+json")
