"""A failed webhook delivery stores a generic reason where tenants read, the detail apart for operators."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.db import webhooks as wq
from gateway.webhooks.dispatcher import UNREACHABLE
from tests.conftest import Gateway
from tests.e2e.test_webhooks import FAST, T2I, auth, outbox
from tests.waiting import eventually


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_an_unreachable_endpoint_stores_a_generic_reason_and_the_detail_apart(
    make_gateway: Callable[..., Awaitable[Gateway]],
) -> None:
    gw = await make_gateway(webhooks=FAST)
    tenant_id, key = await gw.tenant(credits=10)
    port = closed_port()
    url = f"http://127.0.0.1:{port}/hook"  # 127.0.0.1 is allow-listed in tests
    assert (
        await gw.client.post("/v1/text-to-image", json={**T2I, "webhook_url": url}, headers=auth(key))
    ).status_code == 200

    async def failed_once() -> list[Any] | None:
        rows = await outbox(gw)
        return rows if rows and rows[0]["last_error"] is not None else None

    [row] = await eventually(failed_once, what="a failed first attempt")  # it fails within moments
    assert row["last_error"] == UNREACHABLE
    assert "ConnectError" in row["last_error_detail"]
    async with gw.pool.acquire() as conn:
        [seen] = await wq.messages_for(conn, tenant_id)
    assert seen["last_error"] == UNREACHABLE
    assert "last_error_detail" not in dict(seen)
    assert str(port) not in str(dict(seen)).replace(url, "")
