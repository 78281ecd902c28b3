"""EngineClient: the engines' requests built and sent without httpx's client layer, to the same effect."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.engines.client import EngineClient

TIMEOUT = httpx.Timeout(7, connect=2)


def recorder(seen: list[httpx.Request], answer: httpx.Response | None = None) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answer if answer is not None else httpx.Response(200, json={"ok": True})

    return httpx.MockTransport(handler)


def wire(request: httpx.Request) -> tuple[str, str, list[tuple[bytes, bytes]], bytes, object]:
    return request.method, str(request.url), request.headers.raw, request.content, request.extensions


@pytest.mark.parametrize(
    ("method", "kwargs"),
    [
        ("POST", {"content": b'{"a":1}', "headers": {"Authorization": "Bearer k", "Content-Type": "application/json"}}),
        ("GET", {"headers": {"user-agent": "ours/1", "ACCEPT": "image/png"}}),  # replaces defaults, any case
        ("DELETE", {}),
        ("POST", {"content": b"x", "timeout": None}),
        ("GET", {"timeout": 3.5}),
    ],
)
async def test_a_plain_request_is_built_exactly_as_httpx_builds_it(method: str, kwargs: dict[str, object]) -> None:
    url = "https://vendor.test/v2/jobs/7?x=1"
    async with (
        EngineClient(transport=recorder([]), timeout=TIMEOUT) as ours,
        httpx.AsyncClient(transport=recorder([]), timeout=TIMEOUT) as stock,
    ):
        assert wire(ours.build_request(method, url, **kwargs)) == wire(stock.build_request(method, url, **kwargs))  # type: ignore[arg-type]


async def test_a_plain_request_reaches_the_transport_and_its_answer_is_read() -> None:
    seen: list[httpx.Request] = []
    async with EngineClient(transport=recorder(seen), timeout=TIMEOUT) as client:
        request = client.build_request("POST", "http://vendor.test/submit", content=b"{}")
        response = await client.send(request)
    assert seen == [request]
    assert response.request is request
    assert response.json() == {"ok": True}
    assert response.is_closed


async def test_a_vendor_cookie_is_neither_kept_nor_sent_with_the_next_call() -> None:
    seen: list[httpx.Request] = []
    answer = httpx.Response(200, headers={"Set-Cookie": "lb=node-3; Path=/"})
    async with EngineClient(transport=recorder(seen, answer), timeout=TIMEOUT) as client:
        for _ in range(2):
            await client.send(client.build_request("GET", "http://vendor.test/status"))
        assert not client.cookies
    assert "cookie" not in seen[1].headers
    # httpx's own client would have sent it back, with whichever tenant's request came next.
    stock_seen: list[httpx.Request] = []
    async with httpx.AsyncClient(transport=recorder(stock_seen, answer)) as stock:
        for _ in range(2):
            await stock.get("http://vendor.test/status")
    assert stock_seen[1].headers["cookie"] == "lb=node-3"


async def test_relative_urls_and_query_params_go_through_httpx_unchanged() -> None:
    seen: list[httpx.Request] = []
    async with EngineClient(transport=recorder(seen), base_url="http://vendor.test/api/", timeout=TIMEOUT) as client:
        await client.get("jobs", params={"page": 2})
        await client.post("http://vendor.test/form", data={"a": "1"})
    assert str(seen[0].url) == "http://vendor.test/api/jobs?page=2"
    assert seen[1].content == b"a=1"


async def test_a_streamed_answer_is_left_unread_for_the_caller() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"ab"
        yield b"cd"

    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=chunks()))
    async with EngineClient(transport=transport, timeout=TIMEOUT) as client:
        async with client.stream("GET", "http://vendor.test/image.png") as response:
            assert not response.is_closed
            assert b"".join([chunk async for chunk in response.aiter_bytes()]) == b"abcd"
        assert response.is_closed


async def test_a_body_that_fails_while_read_is_closed_and_the_error_raised() -> None:
    closed: list[bool] = []

    class Broken(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b"partial"
            raise httpx.ReadError("connection reset")

        async def aclose(self) -> None:
            closed.append(True)

    transport = httpx.MockTransport(lambda request: httpx.Response(200, stream=Broken()))
    async with EngineClient(transport=transport, timeout=TIMEOUT) as client:
        with pytest.raises(httpx.ReadError):
            await client.send(client.build_request("GET", "http://vendor.test/x"))
    assert closed == [True]


async def test_redirects_are_followed_by_httpx_when_the_client_asks_for_them() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/old":
            return httpx.Response(302, headers={"Location": "http://vendor.test/new"})
        return httpx.Response(200, text="moved")

    async with EngineClient(transport=httpx.MockTransport(handler), follow_redirects=True) as client:
        response = await client.get("http://vendor.test/old")
    assert response.text == "moved"
    async with EngineClient(transport=httpx.MockTransport(handler)) as client:
        assert (await client.get("http://vendor.test/old")).status_code == 302


async def test_a_closed_client_refuses_to_send() -> None:
    client = EngineClient(transport=recorder([]))
    await client.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await client.send(httpx.Request("GET", "http://vendor.test/"))


def test_mounts_and_proxies_are_refused_because_the_short_path_would_skip_them() -> None:
    with pytest.raises(ValueError, match="mounts or proxies"):
        EngineClient(transport=recorder([]), proxy="http://proxy.test:3128")
    with pytest.raises(ValueError, match="mounts or proxies"):
        EngineClient(transport=recorder([]), mounts={"http://": httpx.AsyncHTTPTransport()})
