"""The outermost ASGI layer: a request id for every request and, with tracing on, its server span.

It wraps the whole application, routing and error handling included, so a 404 or a 405 carries
an `X-Request-Id` too. The id is the client's when it sent a well-formed one, else a new one; it
is put in the log context for the duration of the request, in `scope["state"]["request_id"]`,
and on the response. With tracing on, the span continues a `traceparent` the caller sent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from gateway.observability import context
from gateway.observability.tracing import enabled, extract_context, span

_HEADER = context.REQUEST_ID_HEADER.lower().encode()


class RequestContext:
    """ASGI middleware: request id, log context and (when tracing is on) the SERVER span."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        given = None
        for name, value in scope["headers"]:  # raw bytes: no Headers object for a request that may need none
            if name == _HEADER:
                given = value.decode("latin-1")
                break
        request_id = context.accept_request_id(given)
        cast("dict[str, Any]", scope).setdefault("state", {})["request_id"] = request_id
        header = (_HEADER, request_id.encode())
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        token = context.start(context.LogFields(request_id=request_id))
        try:
            if not enabled():
                await self.app(scope, receive, send_with_id)
                return
            await self._traced(scope, receive, send_with_id, request_id, lambda: status)
        finally:
            context.finish(token)

    async def _traced(
        self, scope: HTTPScope, receive: Receive, send: Send, request_id: str, status: Callable[[], int]
    ) -> None:
        method = scope["method"]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in _TRACE_HEADERS}
        attributes: dict[str, AttributeValue] = {
            "http.request.method": method,
            "url.path": scope["path"],
            "url.scheme": scope.get("scheme", "http"),
            "gateway.request_id": request_id,
        }
        with span(method, attributes, kind=SpanKind.SERVER, context=extract_context(headers)) as server:
            try:
                await self.app(scope, receive, send)
            finally:
                # The route template is known once routing ran; it names the span (low cardinality).
                route = cast("dict[str, Any]", scope).get("path_template")
                if route:
                    server.update_name(f"{method} {route}")
                    server.set_attribute("http.route", route)
                code = status()
                if code:
                    server.set_attribute("http.response.status_code", code)
                    if code >= 500:
                        server.set_status(Status(StatusCode.ERROR))


_TRACE_HEADERS = frozenset((b"traceparent", b"tracestate"))
