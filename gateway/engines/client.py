"""The engines' HTTP client: httpx's `AsyncClient`, without the per-request work the engines never use.

With our transport (gateway/engines/transport.py) underneath, httpx's client layer was more than half of
the client CPU of an engine call (bench/engine_client.py). For every request it merges the base URL,
query parameters and cookies into a new URL and header set, runs the auth and redirect machinery, and
afterwards parses the response for cookies to keep. The engines send absolute URLs with their own
headers and a JSON body (or none), use no auth flow, follow no redirects and set no event hooks. So
for such a request this client builds it directly (the URL parsed once per distinct URL) and hands it
to the transport; anything else (a form upload, a relative URL, query parameters) goes through
httpx's own code, unchanged.

What the short path leaves out, on purpose:
- cookies. A vendor's `Set-Cookie` is not kept, so it is never sent along with a later call for
  another tenant. The engines authenticate with headers, and no vendor document relies on cookies;
- `Response.elapsed` (unused: the router times attempts itself) and httpx's INFO log line per request.
What it keeps: the client's default headers (a caller's header of the same name replaces one), its
timeout as the request's `timeout` extension unless the call gives one, `Response.request`, reading
the body unless streaming, and closing the response when reading fails.
"""

from __future__ import annotations

import functools
from typing import Any

import httpx

from gateway.observability.tracing import inject_traceparent

_DEFAULT = httpx.USE_CLIENT_DEFAULT


@functools.lru_cache(maxsize=1024)
def _parsed(url: str) -> httpx.URL:
    """`httpx.URL(url)`, parsed once: httpx's URL parser is pure Python, and an engine calls the same
    few URLs again and again. A URL object is immutable, so requests may share it."""
    return httpx.URL(url)


class EngineClient(httpx.AsyncClient):
    """An `httpx.AsyncClient` whose plain requests skip the client layer (see the module docstring).

    `transport` is required: the short path sends through it, as httpx would with no mounts or proxies,
    which is why those are not accepted here.
    """

    def __init__(self, *, transport: httpx.AsyncBaseTransport, propagate_trace: bool = False, **kwargs: Any) -> None:
        if "mounts" in kwargs or "proxy" in kwargs:
            raise ValueError("EngineClient sends through its one transport: no mounts or proxies")
        # No proxies from the environment either: vendor calls carry secrets and go where the config says.
        super().__init__(transport=transport, trust_env=False, **kwargs)
        self._direct = transport
        # Only an engine configured to share our traces gets traceparent (`propagate_trace`).
        self._propagate_trace = propagate_trace

    def build_request(
        self,
        method: str,
        url: httpx.URL | str,
        *,
        content: Any = None,
        data: Any = None,
        files: Any = None,
        json: Any = None,
        params: Any = None,
        headers: Any = None,
        cookies: Any = None,
        timeout: Any = _DEFAULT,
        extensions: Any = None,
    ) -> httpx.Request:
        plain = (
            isinstance(url, str)
            and url.startswith(("https://", "http://"))
            and data is None
            and files is None
            and json is None
            and params is None
            and cookies is None
            and extensions is None
            and (headers is None or isinstance(headers, dict))
            and not self.cookies
        )
        if not plain:
            request = super().build_request(
                method,
                url,
                content=content,
                data=data,
                files=files,
                json=json,
                params=params,
                headers=headers,
                cookies=cookies,
                timeout=timeout,
                extensions=extensions,
            )
            if self._propagate_trace:
                inject_traceparent(request.headers)
            return request
        assert isinstance(url, str)
        merged = httpx.Headers(self.headers)
        merged.update(headers)  # a caller's header replaces a default of the same name, as in httpx
        if self._propagate_trace:
            inject_traceparent(merged)
        limits = (self.timeout if timeout is _DEFAULT else httpx.Timeout(timeout)).as_dict()
        return httpx.Request(method, _parsed(url), content=content, headers=merged, extensions={"timeout": limits})

    async def send(
        self,
        request: httpx.Request,
        *,
        stream: bool = False,
        auth: Any = _DEFAULT,
        follow_redirects: Any = _DEFAULT,
    ) -> httpx.Response:
        hooks = self.event_hooks
        stock = auth is not _DEFAULT or follow_redirects is not _DEFAULT or self.follow_redirects
        if stock or self.auth is not None or hooks["request"] or hooks["response"]:
            return await super().send(request, stream=stream, auth=auth, follow_redirects=follow_redirects)
        if self.is_closed:
            raise RuntimeError("Cannot send a request, as the client has been closed.")
        response = await self._direct.handle_async_request(request)
        response.request = request
        if not stream:
            try:
                await response.aread()
            except BaseException:
                await response.aclose()
                raise
        return response
