"""One request's trace, as the SDK's in-memory exporter sees it: the server span, admission, each
engine attempt, the blob write and the settlement, and an async job's run linked to its request."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from tests.conftest import Gateway
from tests.spans import Spans, recording_spans
from tests.waiting import eventually

T2I = {"prompt": "a lighthouse at dusk", "width": 512, "height": 512, "steps": 20}
ONLY_A2C = {"text-to-image": ["a2c"], "image-to-image": ["ait"], "inpaint": ["a2c"]}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def parent_of(span: ReadableSpan, spans: Spans) -> ReadableSpan:
    assert span.parent is not None, f"{span.name} has no parent"
    [parent] = [s for s in spans.all() if s.context.span_id == span.parent.span_id]
    return parent


async def test_a_sync_request_with_one_failed_attempt_is_one_trace_with_every_step(
    make_gateway: Callable[..., Awaitable[Gateway]],
) -> None:
    gw = await make_gateway(routes=ONLY_A2C)
    tenant_id, key = await gw.tenant()
    gw.extra["a2c"].fail_with_status(500, times=1)  # the first attempt fails, the retry succeeds
    with recording_spans() as spans:
        response = await gw.client.post("/v1/text-to-image", json=T2I, headers=auth(key))
        assert response.status_code == 200, response.text
    job = response.json()
    request_id = response.headers["x-request-id"]

    server = spans.one("POST /v1/text-to-image")
    trace_id = server.context.trace_id
    assert {s.context.trace_id for s in spans.all()} == {trace_id}, spans.tree()
    print(spans.tree())  # the trace, for `pytest -s`
    assert server.kind is SpanKind.SERVER
    assert server.parent is None
    assert server.attributes is not None
    assert server.attributes["http.route"] == "/v1/text-to-image"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["gateway.request_id"] == request_id

    admission = spans.one("billing.admission")
    assert parent_of(admission, spans) is server
    assert admission.attributes is not None
    assert admission.attributes["gateway.tenant_id"] == str(tenant_id)
    assert admission.attributes["gateway.job_id"] == job["id"]
    assert admission.attributes["gateway.reserved"] == 400  # 0.4 credits in thousandths
    assert parent_of(spans.one("db.admit"), spans) is admission

    run = spans.one("job.run")
    assert parent_of(run, spans) is server  # a sync request waits for its job inside its span
    first, second = sorted(spans.named("engine.attempt"), key=lambda s: s.start_time or 0)
    for retry, attempt in enumerate((first, second)):
        assert parent_of(attempt, spans) is run
        assert attempt.attributes is not None
        assert attempt.attributes["gateway.engine.name"] == "a2c"
        assert attempt.attributes["gateway.engine.kind"] == "api2convert"
        assert attempt.attributes["gateway.retry"] == retry
    assert first.attributes is not None
    assert second.attributes is not None
    assert first.attributes["gateway.engine.outcome"] == "failed"
    assert first.status.status_code is StatusCode.ERROR
    assert second.attributes["gateway.engine.outcome"] == "succeeded"
    assert second.status.status_code is StatusCode.UNSET
    assert [a["outcome"] for a in job["attempts"]] == ["failed", "succeeded"]

    blob = spans.one("blob.put")
    assert parent_of(blob, spans) is run
    assert blob.attributes is not None
    assert blob.attributes["gateway.blob.store"] == "filesystem"
    written = blob.attributes["gateway.blob.bytes"]
    assert isinstance(written, int)
    assert written > 0

    settlement = spans.one("billing.settlement")
    assert parent_of(settlement, spans) is run
    assert settlement.attributes is not None
    assert settlement.attributes["gateway.settlement.status"] == "settled"
    assert parent_of(spans.one("db.settle"), spans) is settlement
    # In order: admitted, then attempts, then the image stored, then settled.
    assert admission.end_time is not None
    assert first.start_time is not None
    assert admission.end_time <= first.start_time
    assert second.end_time is not None
    assert blob.start_time is not None
    assert blob.end_time is not None
    assert second.end_time <= blob.start_time
    assert settlement.start_time is not None
    assert blob.end_time <= settlement.start_time


async def test_an_async_jobs_run_is_its_own_trace_linked_to_the_request(
    make_gateway: Callable[..., Awaitable[Gateway]],
) -> None:
    gw = await make_gateway()
    _, key = await gw.tenant()
    with recording_spans() as spans:
        response = await gw.client.post("/v1/text-to-image", json={**T2I, "async": True}, headers=auth(key))
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        await eventually(lambda: spans.named("job.run"), what="the runner's job.run span")
    server = spans.one("POST /v1/text-to-image")
    run = spans.one("job.run")
    assert run.parent is None, "the runner's span starts a trace of its own"
    assert run.context.trace_id != server.context.trace_id
    assert [(link.context.trace_id, link.context.span_id) for link in run.links] == [
        (server.context.trace_id, server.context.span_id)
    ]
    assert run.attributes is not None
    assert run.attributes["gateway.job_id"] == job_id
    assert run.attributes["gateway.request_id"] == response.headers["x-request-id"]
    attempt = spans.one("engine.attempt")
    assert attempt.context.trace_id == run.context.trace_id


async def test_a_callers_traceparent_is_continued_and_vendors_are_not_sent_ours(
    make_gateway: Callable[..., Awaitable[Gateway]],
) -> None:
    gw = await make_gateway()
    _, key = await gw.tenant()
    with recording_spans() as spans:
        response = await gw.client.post(
            "/v1/text-to-image",
            json=T2I,
            headers={**auth(key), "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
        )
    assert response.status_code == 200, response.text
    server = spans.one("POST /v1/text-to-image")
    assert format(server.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert server.parent is not None
    assert format(server.parent.span_id, "016x") == "b7ad6b7169203331"
    calls = gw.extra["a2c"].calls
    assert calls, "the vendor was called"
    for call in calls:
        names = {name.lower() for name in call.headers}
        assert not names & {"traceparent", "tracestate", "x-request-id"}, call.headers


async def test_engine_latency_exemplars_carry_the_attempts_trace_id(
    make_gateway: Callable[..., Awaitable[Gateway]],
) -> None:
    gw = await make_gateway()
    _, key = await gw.tenant()
    with recording_spans() as spans:
        response = await gw.client.post("/v1/text-to-image", json=T2I, headers=auth(key))
    assert response.status_code == 200, response.text
    trace_id = format(spans.one("engine.attempt").context.trace_id, "032x")
    scraped = await gw.client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert scraped.headers["content-type"].startswith("application/openmetrics-text")
    buckets = [line for line in scraped.text.splitlines() if line.startswith("gateway_engine_attempt_seconds_bucket")]
    assert any(f'trace_id="{trace_id}"' in line for line in buckets), buckets
    plain = await gw.client.get("/metrics")
    assert plain.headers["content-type"].startswith("text/plain")
    assert "trace_id" not in plain.text, "the Prometheus text format has no exemplars"


async def test_a_vendor_configured_to_share_traces_gets_the_attempts_traceparent(
    make_gateway: Callable[..., Awaitable[Gateway]], fake_api2convert: Any
) -> None:
    a2c = {
        "kind": "api2convert",
        "base_url": fake_api2convert.base_url,
        "api_key_env": "A2C_KEY",
        "poll_interval_s": 0.01,
        "max_poll_interval_s": 0.05,
        "propagate_trace": True,
    }
    gw = await make_gateway(engines={"a2c": a2c}, routes={"text-to-image": ["a2c"]})
    _, key = await gw.tenant()
    with recording_spans() as spans:
        response = await gw.client.post("/v1/text-to-image", json=T2I, headers=auth(key))
    assert response.status_code == 200, response.text
    attempt = spans.one("engine.attempt").context
    expected = f"00-{attempt.trace_id:032x}-"
    sent = [{k.lower(): v for k, v in call.headers.items()} for call in fake_api2convert.calls]
    assert sent, "the vendor was called"
    for headers in sent:
        assert headers["traceparent"].startswith(expected), headers
