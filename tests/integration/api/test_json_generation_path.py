"""The generation routes' JSON path (gateway/api/images.py, `JsonGeneration`) answers every request as
the Litestar route behind it does: the same status, problem, headers and job, for successes and for
each kind of refusal; forms and what the route's parameters would refuse still go to the route."""

from __future__ import annotations

import base64
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from litestar.types import Receive, Scope, Send

from gateway.api.images import JsonGeneration
from tests.conftest import Gateway
from tests.fakes.images import png

_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|msg_[0-9a-f]+|[A-Za-z0-9_-]{43}")
# What differs between two runs of the same request: ids, times, and the tenant's key.
_VARYING = {
    "id",
    "created_at",
    "updated_at",
    "finished_at",
    "started_at",
    "expires_at",
    "url",
    "seed",
    "latency_ms",
    "request_id",
}
_HEADERS = ("content-type", "location", "retry-after", "www-authenticate", "idempotent-replayed")


def _masked(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: "<varies>" if k in _VARYING else _masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    if isinstance(value, str):
        return _ID.sub("<id>", value)
    return value


async def _answers(gateway: Gateway) -> list[Any]:
    """Every case's answer, with what varies between runs masked."""
    _, key = await gateway.tenant()
    _, reader = await gateway.tenant(scopes=["jobs:read"])
    _, broke = await gateway.tenant(credits=0)
    limited = await gateway.key((await gateway.tenant())[0], scopes=["generate"], rate_limit_per_minute=1)
    image = base64.b64encode(png(64, 64)).decode()
    mask = base64.b64encode(png(64, 64, (255, 255, 255))).decode()
    ok = {"prompt": "a lighthouse", "width": 256, "height": 256}
    cases: list[tuple[str, str | None, dict[str, str], Any]] = [
        ("/v1/text-to-image", key, {}, ok),
        ("/v1/text-to-image", key, {"Idempotency-Key": "same"}, ok),
        ("/v1/text-to-image", key, {"Idempotency-Key": "same"}, ok),
        ("/v1/text-to-image", key, {"Idempotency-Key": "same"}, {**ok, "n": 2}),
        ("/v1/text-to-image", key, {"Prefer": "respond-async"}, ok),
        ("/v1/image-to-image", key, {}, {**ok, "width": 512, "height": 512, "image": image}),
        ("/v1/text-to-image", None, {}, ok),
        ("/v1/text-to-image", "gw_nonsense", {}, ok),
        ("/v1/text-to-image", reader, {}, ok),
        ("/v1/text-to-image", broke, {}, ok),
        ("/v1/text-to-image", limited, {}, ok),
        ("/v1/text-to-image", limited, {}, ok),
        ("/v1/text-to-image", key, {}, {**ok, "n": "2"}),
        ("/v1/text-to-image", key, {}, {**ok, "colour": "red"}),
        ("/v1/text-to-image", key, {}, {"width": 256}),
        ("/v1/text-to-image", key, {}, b"{not json"),
        ("/v1/text-to-image", None, {}, b"{not json"),
        ("/v1/text-to-image", key, {"Idempotency-Key": "k" * 256}, ok),
        ("/v1/inpaint", key, {}, {**ok, "image": image, "mask": mask}),
        ("/v1/inpaint", key, {}, {**ok, "image": image}),
        ("/v1/text-to-image", key, {"Content-Type": "text/plain"}, b'{"prompt": "a lighthouse"}'),
    ]
    answers = []
    for path, presented, headers, body in cases:
        sent = dict(headers)
        if presented is not None:
            sent["Authorization"] = f"Bearer {presented}"
        if isinstance(body, bytes):
            sent.setdefault("Content-Type", "application/json")
            response = await gateway.client.post(path, headers=sent, content=body)
        else:
            response = await gateway.client.post(path, headers=sent, json=body)
        kept: dict[str, Any] = {
            name: _ID.sub("<id>", response.headers[name]) for name in _HEADERS if name in response.headers
        }
        kept["ratelimit"] = [name for name in response.headers if name.startswith("ratelimit-")]
        answer = _masked(response.json())
        if response.status_code == 202:  # the runner may have claimed the job before the answer
            assert answer["state"] in ("queued", "running")
            answer["state"] = "<varies>"
        answers.append((path, response.status_code, kept, answer))
    return answers


async def test_json_requests_get_the_answers_the_route_gives(
    make_gateway: Callable[..., Awaitable[Gateway]], monkeypatch: pytest.MonkeyPatch
) -> None:
    served: list[bool] = []
    serve = JsonGeneration.__call__

    async def counting(self: JsonGeneration, scope: Scope, receive: Receive, send: Send) -> None:
        route, delegated = self.app, []

        async def to_route(scope: Scope, receive: Receive, send: Send) -> None:
            delegated.append(True)
            await route(scope, receive, send)

        self.app = to_route
        try:
            await serve(self, scope, receive, send)
        finally:
            self.app = route
            served.append(not delegated)

    monkeypatch.setattr(JsonGeneration, "__call__", counting)
    fast = await _answers(await make_gateway())

    async def route_only(self: JsonGeneration, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    monkeypatch.setattr(JsonGeneration, "__call__", route_only)
    routed = await _answers(await make_gateway())

    for mine, theirs in zip(fast, routed, strict=True):
        assert mine == theirs
    statuses = [status for _, status, _, _ in fast]
    assert statuses[:10] == [200, 200, 200, 409, 202, 200, 401, 401, 403, 402]
    assert statuses[10:] == [200, 429, 422, 422, 422, 400, 401, 422, 200, 422, 200]
    # Only the over-long key and the plain-text body went the route's way.
    assert served == [True] * 17 + [False, True, True, False]
