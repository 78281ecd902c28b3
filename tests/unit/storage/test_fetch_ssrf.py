"""Fetching client URLs (input images, webhooks): the SSRF rule, one DNS lookup per hop with the
connection made to the address checked, a total deadline, and failures that all read the same."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any, cast

import httpx
import pytest

from gateway.config import WebhookConfig
from gateway.db.notifications import Listener
from gateway.errors import ValidationFailed
from gateway.storage.inputs import FETCH_FAILED, fetch_remote, is_public_address
from gateway.webhooks.dispatcher import UNREACHABLE, WebhookDispatcher
from tests.fakes.images import png

PUBLIC = "93.184.216.34"
HOST = "images.example"


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """`images.example` resolves to a public address the first time and to loopback afterwards (a
    rebinding name server); returns the hosts looked up, one entry per lookup."""
    looked_up: list[str] = []
    real = socket.getaddrinfo

    def resolve(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != HOST:
            return real(host, port, *args, **kwargs)
        looked_up.append(host)
        address = PUBLIC if len(looked_up) == 1 else "127.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    return looked_up


def client(handler: Callable[[httpx.Request], Any]) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("2002:0a00:0001::1", False),  # 6to4 of 10.0.0.1
        ("2002:7f00:0001::1", False),  # 6to4 of 127.0.0.1
        ("2002:a9fe:a9fe::1", False),  # 6to4 of 169.254.169.254 (cloud metadata)
        ("2002:5db8:d822::1", True),  # 6to4 of a public address
        ("64:ff9b::a00:1", False),  # NAT64 of 10.0.0.1
        ("64:ff9b::5db8:d822", True),
        ("::ffff:10.0.0.1", False),
        ("fd00::1", False),
        (PUBLIC, True),
        ("2606:4700::1111", True),
    ],
)
def test_addresses_that_reach_a_private_ipv4_address_are_not_public(address: str, public: bool) -> None:
    assert is_public_address(address) is public


async def test_the_fetch_connects_to_the_address_it_checked_not_a_second_lookup(dns: list[str]) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=png(8, 8))

    async with client(handler) as http:
        data = await fetch_remote(
            f"https://{HOST}/cat.png?size=8", "image", client=http, max_bytes=1 << 20, allow_hosts=frozenset()
        )
    assert data == png(8, 8)
    assert dns == [HOST], "one lookup: the connection reuses the address checked"
    [request] = seen
    assert request.url.host == PUBLIC
    assert request.url.path == "/cat.png"
    assert request.url.query == b"size=8"
    assert request.headers["host"] == HOST
    assert request.extensions["sni_hostname"] == HOST


async def test_every_failed_fetch_reads_the_same(dns: list[str]) -> None:
    def not_found(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404)

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    def timed_out(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    details = set()
    for handler in (not_found, refused, timed_out):
        dns.clear()
        async with client(handler) as http:
            with pytest.raises(ValidationFailed) as caught:
                await fetch_remote(
                    f"https://{HOST}:8443/x.png", "image", client=http, max_bytes=1024, allow_hosts=frozenset()
                )
        details.add(str(caught.value.detail))
    assert details == {f"image: {FETCH_FAILED}"}


async def test_a_server_trickling_bytes_is_cut_off_at_the_total_deadline(dns: list[str]) -> None:
    async def trickle() -> AsyncIterator[bytes]:
        while True:
            yield b"x"
            await asyncio.sleep(0.02)  # each read is quick: only a deadline on the whole fetch ends it

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=trickle())

    loop = asyncio.get_running_loop()
    started = loop.time()
    async with client(handler) as http:
        with pytest.raises(ValidationFailed):
            await fetch_remote(
                f"https://{HOST}/slow.png",
                "image",
                client=http,
                max_bytes=1 << 20,
                allow_hosts=frozenset(),
                deadline_s=0.3,
            )
    assert loop.time() - started < 3


def dispatcher(handler: Callable[[httpx.Request], Any]) -> WebhookDispatcher:
    return WebhookDispatcher(
        pool=cast(Any, None),
        listener=Listener("postgresql://unused"),
        config=WebhookConfig(),
        allow_hosts=frozenset(),
        transport=httpx.MockTransport(handler),
    )


def message(url: str) -> dict[str, Any]:
    return {
        "url": url,
        "message_id": "msg_1",
        "event_type": "job.succeeded",
        "payload": {"data": {}},
        "created_at": datetime.now(UTC),
        "webhook_secret": "whsec_dGVzdHRlc3R0ZXN0dGVzdHRlc3R0ZXN0",
        "attempts": 1,
    }


async def test_a_webhook_is_posted_to_the_address_its_url_was_checked_at(dns: list[str]) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    hooks = dispatcher(handler)
    assert await hooks.attempt(message(f"https://{HOST}/hook")) is None
    await hooks.stop()
    assert dns == [HOST]
    [request] = seen
    assert (request.url.host, request.headers["host"], request.extensions["sni_hostname"]) == (PUBLIC, HOST, HOST)
    assert request.headers["webhook-id"] == "msg_1"


async def test_a_failed_webhook_keeps_the_exception_for_operators_and_a_generic_reason(dns: list[str]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused to 10.1.2.3:5432", request=request)

    hooks = dispatcher(handler)
    failure = await hooks.attempt(message(f"https://{HOST}/hook"))
    await hooks.stop()
    assert failure is not None
    assert failure.reason == UNREACHABLE
    assert "10.1.2.3" not in failure.reason
    assert "10.1.2.3:5432" in failure.detail
