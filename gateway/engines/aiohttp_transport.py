"""The engine clients' HTTP transport on aiohttp, through httpx-aiohttp, with httpx's exceptions kept exact.

httpx-aiohttp (the transport the OpenAI SDK offers) sends an httpx request with aiohttp's client, whose
HTTP parser is C. Two things are set up here rather than taken as it ships:
- the session: no cookie jar (a vendor's `Set-Cookie` must never ride along with another tenant's
  call), no proxies or netrc from the environment, a pool of `limits.max_connections`, keep-alive
  for `limits.keepalive_expiry`;
- the exceptions. httpx-aiohttp 0.2 maps every `aiohttp.ClientConnectionError` to `ConnectTimeout`,
  so a refused connection or a server that hung up mid-answer would read as a timeout. Callers tell
  "could not reach" (ConnectError: nothing was sent) from "went wrong after sending"
  (RemoteProtocolError, ReadError) and from timeouts, so each aiohttp error is mapped again, here,
  to the httpx exception httpx's own transport raises in that situation.
aiohttp sends an idempotent request once more when its connection closed under it (RFC 9112, 9.3.1.1),
never a POST. What it does not do that our own transport does is listed, and checked, in
tests/integration/engines/test_transport.py (GAPS); the measurements are in gateway/engines/transport.py.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport


def _httpx_error(exc: BaseException) -> type[httpx.TransportError] | None:
    """The httpx exception for an aiohttp one, as httpx's default transport would raise it; None if not aiohttp's."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout
    if isinstance(exc, aiohttp.SocketTimeoutError):
        return httpx.ReadTimeout
    if isinstance(exc, aiohttp.ServerTimeoutError | asyncio.TimeoutError):
        return httpx.ReadTimeout
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError | aiohttp.ClientResponseError):
        return httpx.RemoteProtocolError
    if isinstance(exc, aiohttp.InvalidURL):
        return httpx.UnsupportedProtocol
    if isinstance(exc, aiohttp.ClientOSError):
        return httpx.ReadError
    if isinstance(exc, aiohttp.ClientError):
        return httpx.RemoteProtocolError
    return None


@contextmanager
def _exact_errors(request: httpx.Request) -> Iterator[None]:
    """Re-raise the exception of an aiohttp failure (httpx-aiohttp's, or aiohttp's own) as the exact httpx one."""
    try:
        yield
    except httpx.TransportError as exc:
        cause = exc.__cause__
        mapped = _httpx_error(cause) if cause is not None else None
        if mapped is None or type(exc) is mapped:
            raise
        raise mapped(str(cause) or type(cause).__name__, request=request) from cause
    except (TimeoutError, aiohttp.ClientError) as exc:
        mapped = _httpx_error(exc)
        assert mapped is not None
        raise mapped(str(exc) or type(exc).__name__, request=request) from exc


class _Body(httpx.AsyncByteStream):
    """The response body of httpx-aiohttp, with its errors mapped like the request's."""

    def __init__(self, inner: httpx.AsyncByteStream, request: httpx.Request) -> None:
        self._inner = inner
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _exact_errors(self._request):
            async for chunk in self._inner:
                yield chunk

    async def aclose(self) -> None:
        with _exact_errors(self._request):
            await self._inner.aclose()


class AiohttpEngineTransport(httpx.AsyncBaseTransport):
    """`httpx_aiohttp.AiohttpTransport` on a session made for engine calls (see the module docstring)."""

    def __init__(self, *, limits: httpx.Limits | None = None, ssl_context: ssl.SSLContext | None = None) -> None:
        self._limits = limits or httpx.Limits()
        self._ssl = ssl_context or httpx.create_ssl_context(verify=True, trust_env=False)
        self._inner = AiohttpTransport(client=self._session)

    def _session(self) -> aiohttp.ClientSession:
        # Built on first use, inside the event loop that will run it (aiohttp binds a session to one).
        connector = aiohttp.TCPConnector(
            limit=self._limits.max_connections or 0,
            limit_per_host=0,
            keepalive_timeout=self._limits.keepalive_expiry or 0,
            ssl=self._ssl,
        )
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        with _exact_errors(request):
            try:
                response = await self._inner.handle_async_request(request)
            except ValueError as exc:
                # aiohttp's writer refuses a header with a line break (an injection) with ValueError;
                # httpx's transports call that a LocalProtocolError. Nothing was sent.
                raise httpx.LocalProtocolError(str(exc), request=request) from exc
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _Body(response.stream, request)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()
