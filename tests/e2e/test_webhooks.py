"""Webhooks end to end: a real receiver on 127.0.0.1 verifies Standard Webhooks signatures with the
official `standardwebhooks` package, and sees exactly one acknowledged delivery per event."""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from litestar import Litestar, Request, Response, post
from standardwebhooks import Webhook

from gateway.config import WebhookConfig
from gateway.db.audit import run_audit
from gateway.webhooks.dispatcher import retry_delay
from gateway.webhooks.signing import display_secret, new_secret, sign, verify
from tests.conftest import Gateway
from tests.fakes.server import ServerThread
from tests.waiting import eventually

T2I = {"prompt": "a lighthouse at dusk", "width": 512, "height": 512, "steps": 30}
# Fast retries: 0.2 s, then 0.4 s (with jitter at most that), dead after three attempts.
FAST = {"backoff_base_s": 0.2, "backoff_multiplier": 2.0, "max_attempts": 3, "poll_s": 0.2, "timeout_s": 2.0}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def audit_clean(gw: Gateway) -> None:
    async with gw.pool.acquire() as conn:
        assert await run_audit(conn) == {}


@dataclass
class Delivery:
    webhook_id: str
    timestamp: str
    signature: str
    body: bytes
    status: int
    verified: Any = None  # the payload, when the official verifier accepted the signature


@dataclass
class Receiver:
    """A tenant's webhook endpoint. Each message id gets `failures` 500s before a 204."""

    secret: str = ""
    failures: int = 0
    deliveries: list[Delivery] = field(default_factory=list)
    base_url: str = ""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def app(self) -> Litestar:
        receiver = self

        @post("/hook", status_code=204)
        async def hook(request: Request[Any, Any, Any]) -> Response[None]:
            body = await request.body()
            headers = dict(request.headers.items())
            try:
                verified = Webhook(receiver.secret).verify(body, headers)
            except Exception:
                verified = None
            with receiver._lock:
                earlier = sum(1 for d in receiver.deliveries if d.webhook_id == headers.get("webhook-id"))
                status = 500 if earlier < receiver.failures else 204
                receiver.deliveries.append(
                    Delivery(
                        webhook_id=headers.get("webhook-id", ""),
                        timestamp=headers.get("webhook-timestamp", ""),
                        signature=headers.get("webhook-signature", ""),
                        body=body,
                        status=status,
                        verified=verified,
                    )
                )
            return Response(None, status_code=status)

        return Litestar([hook], debug=False)

    def acknowledged(self) -> dict[str, int]:
        """How many 2xx answers each message id got."""
        with self._lock:
            counts: dict[str, int] = {}
            for d in self.deliveries:
                if d.status < 300:
                    counts[d.webhook_id] = counts.get(d.webhook_id, 0) + 1
            return counts

    @property
    def url(self) -> str:
        return f"{self.base_url}/hook"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    server = ServerThread(receiver.app())
    receiver.base_url = server.start()
    try:
        yield receiver
    finally:
        server.stop()


async def webhook_secret(gw: Gateway, key: str) -> str:
    response = await gw.client.get("/v1/webhook", headers=auth(key))
    assert response.status_code == 200
    secret: str = response.json()["secret"]
    return secret


async def outbox(gw: Gateway) -> list[Any]:
    async with gw.pool.acquire() as conn:
        return list(await conn.fetch("SELECT * FROM webhook_outbox ORDER BY id"))


async def settled_outbox(gw: Gateway, messages: int) -> list[Any]:
    """The outbox once all its `messages` are delivered or given up. No dispatcher claims such a message
    again, and each attempt's outcome is written only after the receiver answered it: from then on the
    receiver has seen every delivery there will be, so nothing needs waiting out after this."""

    async def settled() -> list[Any] | None:
        rows = await outbox(gw)
        done = len(rows) == messages and all(r["delivered_at"] or r["failed_at"] for r in rows)
        return rows if done else None

    rows: list[Any] = await eventually(settled, what=f"{messages} outbox messages delivered or given up")
    return rows


async def test_a_webhook_answered_500_is_retried_and_acknowledged_exactly_once(
    make_gateway: Callable[..., Awaitable[Gateway]], receiver: Receiver
) -> None:
    gw = await make_gateway(webhooks=FAST)
    _, key = await gw.tenant(credits=10)
    receiver.secret = await webhook_secret(gw, key)
    receiver.failures = 1
    response = await gw.client.post("/v1/text-to-image", json={**T2I, "webhook_url": receiver.url}, headers=auth(key))
    assert response.status_code == 200
    job = response.json()
    await eventually(lambda: sum(receiver.acknowledged().values()) == 1)
    [row] = await settled_outbox(gw, 1)

    assert [d.status for d in receiver.deliveries] == [500, 204]
    first, second = receiver.deliveries
    assert first.webhook_id == second.webhook_id, "a retry carries the same webhook-id"
    assert first.body == second.body
    for delivery in receiver.deliveries:
        assert delivery.verified is not None, "the official verifier accepts the signature"
        assert delivery.signature.startswith("v1,")
        assert verify(receiver.secret, delivery.webhook_id, int(delivery.timestamp), delivery.body, delivery.signature)
    payload = msgspec.json.decode(second.body)
    assert payload["type"] == "job.succeeded"
    assert payload["data"] == {"id": job["id"], "state": "succeeded", "images": 1, "charged": 0.4}
    assert payload["timestamp"]
    assert row["attempts"] == 2
    assert row["delivered_at"] is not None
    assert row["failed_at"] is None
    await audit_clean(gw)


async def test_a_tampered_body_fails_verification(
    make_gateway: Callable[..., Awaitable[Gateway]], receiver: Receiver
) -> None:
    """The receiver's check is meaningful: the same headers with another body are refused."""
    gw = await make_gateway(webhooks=FAST)
    _, key = await gw.tenant(credits=10)
    receiver.secret = await webhook_secret(gw, key)
    await gw.client.post("/v1/text-to-image", json={**T2I, "webhook_url": receiver.url}, headers=auth(key))
    await eventually(lambda: len(receiver.deliveries) == 1)
    [delivery] = receiver.deliveries
    tampered = delivery.body.replace(b'"images":1', b'"images":9')
    assert tampered != delivery.body
    assert not verify(receiver.secret, delivery.webhook_id, int(delivery.timestamp), tampered, delivery.signature)
    assert not verify(new_secret(), delivery.webhook_id, int(delivery.timestamp), delivery.body, delivery.signature)


async def test_the_tenant_default_url_gets_every_job_event_once(
    make_gateway: Callable[..., Awaitable[Gateway]], receiver: Receiver
) -> None:
    gw = await make_gateway(webhooks=FAST)
    _, key = await gw.tenant(credits=10)
    put = await gw.client.put("/v1/webhook", json={"url": receiver.url}, headers=auth(key))
    assert put.status_code == 200, put.text
    assert put.json()["url"] == receiver.url
    receiver.secret = put.json()["secret"]

    ok = (await gw.client.post("/v1/text-to-image", json=T2I, headers=auth(key))).json()
    gw.extra["a2c"].fail_with_status(500)
    gw.extra["qolaba"].fail_with_status(500)
    failed = (await gw.client.post("/v1/text-to-image", json=T2I, headers=auth(key))).json()["job"]
    gw.extra["a2c"].reset()
    gw.extra["qolaba"].reset()
    gw.extra["a2c"].slow_job(100_000)
    queued = await gw.client.post("/v1/text-to-image", json={**T2I, "async": True}, headers=auth(key))
    await gw.client.post(f"/v1/jobs/{queued.json()['id']}/cancel", headers=auth(key))

    await eventually(lambda: len(receiver.acknowledged()) == 3)
    assert [row["attempts"] for row in await settled_outbox(gw, 3)] == [1, 1, 1]
    assert sorted(receiver.acknowledged().values()) == [1, 1, 1]
    events = {msgspec.json.decode(d.body)["data"]["id"]: msgspec.json.decode(d.body) for d in receiver.deliveries}
    assert events[ok["id"]]["type"] == "job.succeeded"
    assert events[failed["id"]]["type"] == "job.failed"
    assert events[queued.json()["id"]]["type"] == "job.canceled"
    assert all(d.verified is not None for d in receiver.deliveries)

    cleared = await gw.client.put("/v1/webhook", json={"url": None}, headers=auth(key))
    assert cleared.json()["url"] is None
    await audit_clean(gw)


async def test_a_rotated_secret_signs_the_next_deliveries(
    make_gateway: Callable[..., Awaitable[Gateway]], receiver: Receiver
) -> None:
    gw = await make_gateway(webhooks=FAST)
    _, key = await gw.tenant(credits=10)
    old = await webhook_secret(gw, key)
    rotated = await gw.client.post("/v1/webhook/rotate-secret", headers=auth(key))
    assert rotated.status_code == 200
    receiver.secret = rotated.json()["secret"]
    assert receiver.secret != old
    assert receiver.secret.startswith("whsec_")
    await gw.client.post("/v1/text-to-image", json={**T2I, "webhook_url": receiver.url}, headers=auth(key))
    await eventually(lambda: len(receiver.deliveries) == 1)
    assert receiver.deliveries[0].verified is not None


async def test_an_endpoint_that_keeps_failing_is_given_up_after_the_schedule(
    make_gateway: Callable[..., Awaitable[Gateway]], receiver: Receiver
) -> None:
    gw = await make_gateway(webhooks=FAST)
    _, key = await gw.tenant(credits=10)
    receiver.secret = await webhook_secret(gw, key)
    receiver.failures = 1_000
    await gw.client.post("/v1/text-to-image", json={**T2I, "webhook_url": receiver.url}, headers=auth(key))
    await eventually(lambda: len(receiver.deliveries) == 3)
    [row] = await settled_outbox(gw, 1)
    assert len(receiver.deliveries) == 3, "no attempt after the last one of the schedule"
    assert row["attempts"] == 3
    assert row["failed_at"] is not None
    assert row["delivered_at"] is None
    assert row["last_error"] == "HTTP 500"
    await audit_clean(gw)


async def test_two_replicas_deliver_each_event_exactly_once(
    make_gateway: Callable[..., Awaitable[Gateway]], receiver: Receiver
) -> None:
    first = await make_gateway(webhooks=FAST)
    second = await make_gateway(webhooks=FAST)
    _, key = await first.tenant(credits=10)
    receiver.secret = await webhook_secret(first, key)
    for gw in (first, second, first, second, first, second):
        body = {**T2I, "webhook_url": receiver.url, "async": True}
        assert (await gw.client.post("/v1/text-to-image", json=body, headers=auth(key))).status_code == 202
    await eventually(lambda: len(receiver.acknowledged()) == 6)
    # One attempt each: a message claimed by both replicas would have counted two.
    assert [row["attempts"] for row in await settled_outbox(first, 6)] == [1] * 6
    assert list(receiver.acknowledged().values()) == [1] * 6
    assert len(receiver.deliveries) == 6
    await audit_clean(first)


@pytest.mark.parametrize(
    "url",
    [
        "https://10.0.0.1/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/hook",
        "https://localhost/hook",
        "https://192.168.1.10:8443/hook",
        "http://example.com/hook",
    ],
)
async def test_a_private_or_plain_http_webhook_url_is_refused_with_422_naming_the_field(
    gateway: Gateway, url: str
) -> None:
    _, key = await gateway.tenant(credits=10)
    response = await gateway.client.post("/v1/text-to-image", json={**T2I, "webhook_url": url}, headers=auth(key))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["errors"][0]["field"] == "webhook_url"
    default = await gateway.client.put("/v1/webhook", json={"url": url}, headers=auth(key))
    assert default.status_code == 422
    assert default.json()["errors"][0]["field"] == "url"
    assert (await gateway.client.get("/v1/webhook", headers=auth(key))).json()["url"] is None
    balance = (await gateway.client.get("/v1/balance", headers=auth(key))).json()
    assert balance == {"balance": 10.0, "held": 0.0, "available": 10.0, "active_jobs": 0}
    async with gateway.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM jobs") == 0
    await audit_clean(gateway)


async def test_webhook_settings_need_the_keys_manage_scope(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10, scopes=["generate", "jobs:read"])
    assert (await gateway.client.get("/v1/webhook", headers=auth(key))).status_code == 403
    assert (await gateway.client.put("/v1/webhook", json={"url": None}, headers=auth(key))).status_code == 403


# -- signing and schedule, without the network ---------------------------------------------


def test_signatures_match_the_official_library() -> None:
    secret = new_secret()
    body = b'{"type":"job.succeeded","data":{}}'
    ours = sign(secret, "msg_1", 1_700_000_000, body)
    official = Webhook(secret).sign("msg_1", datetime.fromtimestamp(1_700_000_000, tz=UTC), body.decode())
    assert ours == official


def test_url_safe_legacy_secrets_are_shown_in_the_standard_form_of_the_same_key() -> None:
    legacy = "whsec_" + "-_" * 21 + "AA"  # URL-safe base64 of 32 bytes, unpadded
    shown = display_secret(legacy)
    assert "-" not in shown
    assert "_" not in shown.removeprefix("whsec_")
    body = b"{}"
    assert sign(legacy, "m", 1, body) == sign(shown, "m", 1, body)
    now = int(time.time())
    headers = {"webhook-id": "m", "webhook-timestamp": str(now), "webhook-signature": sign(legacy, "m", now, body)}
    assert Webhook(shown).verify(body, headers) == {}


def test_retry_delays_grow_exponentially_are_capped_and_jittered_within_half() -> None:
    config = WebhookConfig()
    lows = [retry_delay(k, config, 0.0) for k in range(1, config.max_attempts)]
    highs = [retry_delay(k, config, 1.0) for k in range(1, config.max_attempts)]
    assert highs[:4] == [10.0, 30.0, 90.0, 270.0]
    assert lows == [h / 2 for h in highs]
    assert max(highs) == config.backoff_max_s
    assert 14 * 3600 < sum(highs) < 16 * 3600, "a bounded schedule: 7.5 to 15 hours with jitter"
