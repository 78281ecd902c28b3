"""X-Request-Id: kept when the client's is well formed, made otherwise, on every response, in
problem+json bodies, in the job it created, in the log lines of its work and its webhook."""

from __future__ import annotations

import re
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from litestar import Litestar, Request, post

from tests.conftest import Gateway
from tests.fakes.server import ServerThread
from tests.integration.observability.logs import captured_logs
from tests.spans import recording_spans
from tests.waiting import eventually

T2I = {"prompt": "a lighthouse at dusk", "width": 512, "height": 512, "steps": 20}
MADE = re.compile(r"[0-9a-f]{32}")


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class Hooks:
    """A webhook endpoint that keeps the headers of each delivery."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []
        self.url = ""
        self._lock = threading.Lock()

    def app(self) -> Litestar:
        @post("/hook", status_code=204)
        async def hook(request: Request[Any, Any, Any]) -> None:
            with self._lock:
                self.headers.append(dict(request.headers.items()))

        return Litestar([hook], debug=False)


@pytest.fixture
def hooks() -> Iterator[Hooks]:
    receiver = Hooks()
    server = ServerThread(receiver.app())
    receiver.url = server.start() + "/hook"
    try:
        yield receiver
    finally:
        server.stop()


async def test_a_well_formed_client_id_is_kept_and_the_job_records_it(
    make_gateway: Callable[..., Awaitable[Gateway]],
) -> None:
    gw = await make_gateway()
    _, key = await gw.tenant()
    mine = "client-7f3a:req/42"
    response = await gw.client.post("/v1/text-to-image", json=T2I, headers={**auth(key), "X-Request-Id": mine})
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == mine
    assert response.json()["request_id"] == mine
    fetched = await gw.client.get(f"/v1/jobs/{response.json()['id']}", headers=auth(key))
    assert fetched.json()["request_id"] == mine, "the job keeps the id of the request that created it"
    assert fetched.headers["x-request-id"] != mine, "the reading request has an id of its own"


@pytest.mark.parametrize(
    "given",
    [None, "", "has space", "back\\slash", "x" * 200, "-starts-with-dash", "caf\u00e9"],
    ids=["absent", "empty", "space", "backslash", "too-long", "leading-dash", "non-ascii"],
)
async def test_a_missing_or_malformed_id_is_replaced_by_a_new_one(
    make_gateway: Callable[..., Awaitable[Gateway]], given: str | None
) -> None:
    gw = await make_gateway()
    headers = {} if given is None else {b"X-Request-Id": given.encode()}
    first = await gw.client.get("/healthz", headers=headers)
    second = await gw.client.get("/healthz", headers=headers)
    assert MADE.fullmatch(first.headers["x-request-id"])
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


async def test_problem_bodies_carry_the_request_id_of_their_response(
    make_gateway: Callable[..., Awaitable[Gateway]],
) -> None:
    gw = await make_gateway()
    _, key = await gw.tenant()
    answers = [
        await gw.client.get("/v1/no-such-route"),  # 404 from routing, before any handler
        await gw.client.delete("/healthz"),  # 405
        await gw.client.get("/v1/balance"),  # 401: no key
        await gw.client.post("/v1/text-to-image", json={**T2I, "width": 7}, headers=auth(key)),  # 422
        await gw.client.post("/v1/text-to-image", json=T2I, headers={**auth(key), "X-Request-Id": "mine-1"}),
    ]
    gw.extra["a2c"].fail_with_status(400)  # the vendor rejects: the sync job fails as a 422 problem
    answers.append(await gw.client.post("/v1/text-to-image", json=T2I, headers=auth(key)))
    statuses = [a.status_code for a in answers]
    assert statuses == [404, 405, 401, 422, 200, 422], [a.text for a in answers]
    for answer in answers:
        if answer.status_code == 200:
            continue
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert answer.json()["request_id"] == answer.headers["x-request-id"]
    failed_job = answers[-1].json()["job"]
    assert failed_job["request_id"] == answers[-1].headers["x-request-id"]


async def test_log_lines_of_a_request_and_its_job_carry_its_ids(
    make_gateway: Callable[..., Awaitable[Gateway]],
) -> None:
    gw = await make_gateway(routes={"text-to-image": ["a2c"], "image-to-image": ["ait"], "inpaint": ["a2c"]})
    tenant_id, key = await gw.tenant()
    gw.extra["a2c"].fail_with_status(503, times=1)  # the failed attempt writes a log line
    with captured_logs() as logs, recording_spans() as spans:
        response = await gw.client.post("/v1/text-to-image", json=T2I, headers={**auth(key), "X-Request-Id": "r-1"})
    assert response.status_code == 200, response.text
    [line] = [line for line in logs.lines() if line["logger"] == "gateway.routing.router"]
    assert line["level"] == "info"
    assert line["request_id"] == "r-1"
    assert line["tenant_id"] == str(tenant_id)
    assert line["job_id"] == response.json()["id"]
    assert line["engine"] == "a2c"
    [attempt] = [s for s in spans.named("engine.attempt") if s.attributes and s.attributes["gateway.retry"] == 0]
    assert line["trace_id"] == format(attempt.context.trace_id, "032x")
    assert line["span_id"] == format(attempt.context.span_id, "016x")
    assert set(line) >= {"time", "level", "logger", "message"}


async def test_a_webhook_delivery_carries_the_request_id_of_its_job(
    make_gateway: Callable[..., Awaitable[Gateway]], hooks: Hooks
) -> None:
    gw = await make_gateway(webhooks={"poll_s": 0.2, "timeout_s": 2.0})
    _, key = await gw.tenant()
    response = await gw.client.post(
        "/v1/text-to-image", json={**T2I, "webhook_url": hooks.url}, headers={**auth(key), "X-Request-Id": "hook-1"}
    )
    assert response.status_code == 200, response.text
    await eventually(lambda: hooks.headers, what="the webhook delivered")
    [delivery] = hooks.headers
    assert delivery["x-request-id"] == "hook-1"
    assert "traceparent" not in delivery
