"""Delivering the webhook outbox: claim due rows (FOR UPDATE SKIP LOCKED), POST them signed,
retry with exponential backoff and jitter, give up after a bounded number of attempts.

Settlement writes outbox rows in the same transaction that finishes a job, so a message exists
exactly when its event happened. Any number of dispatchers (one per API or runner process) share
the table: a claim is a lease (see `claim_due`), and a message acknowledged with a 2xx is marked
delivered and never claimed again. Delivery is at-least-once: if this process dies after the
receiver answered 2xx but before the mark is written, the message is sent again with the same
`webhook-id`, which is what receivers deduplicate on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec

from gateway.backoff import equal_jitter, exponential_step
from gateway.config import WebhookConfig
from gateway.db import webhooks as wq
from gateway.db.notifications import WEBHOOKS_CHANNEL, Listener
from gateway.db.pool import Pool
from gateway.db.types import DATABASE_ERRORS
from gateway.errors import ValidationFailed
from gateway.observability.context import REQUEST_ID_HEADER, bind
from gateway.webhooks.signing import sign
from gateway.webhooks.urls import check_webhook_url
from gateway.worker.drain import drain

log = logging.getLogger(__name__)

USER_AGENT = "image-gateway-webhooks/1"
# A claim outlives the attempt's own time limit by this much, so no other dispatcher takes the
# message over while this one may still be talking to the receiver.
_LEASE_MARGIN_S = 30.0
_jitter = secrets.SystemRandom()


# What a tenant may read about a failed delivery. The exception's text (kept for operators as the
# detail) can name addresses, ports and resolver errors of the network the gateway runs in.
UNREACHABLE = "the endpoint could not be reached"
REFUSED = "the URL is not allowed (not https, or not a public address)"


@dataclass(frozen=True)
class DeliveryFailure:
    """Why an attempt failed: `reason` for the tenant, `detail` for operators only."""

    reason: str
    detail: str


def retry_delay(attempt: int, config: WebhookConfig, fraction: float) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based), before jitter is applied as
    `fraction` in [0, 1]: a delay d = min(max, base * multiplier**(attempt-1)) becomes d/2 + fraction * d/2
    ("equal jitter": retries of many messages spread out, yet never come sooner than half the schedule)."""
    step = exponential_step(config.backoff_base_s, config.backoff_multiplier, attempt - 1, config.backoff_max_s)
    return equal_jitter(step, fraction)


def message_body(row: Any) -> bytes:
    """The JSON body of one message: the Standard Webhooks payload shape (type, timestamp, data)."""
    payload = row["payload"]
    return msgspec.json.encode(
        {"type": row["event_type"], "timestamp": row["created_at"].isoformat(), "data": payload.get("data", {})}
    )


class WebhookDispatcher:
    """Delivers due outbox messages for one process until stopped."""

    def __init__(
        self,
        *,
        pool: Pool,
        listener: Listener,
        config: WebhookConfig,
        allow_hosts: frozenset[str],
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.pool = pool
        self.config = config
        self.allow_hosts = allow_hosts
        self._client = httpx.AsyncClient(
            timeout=config.timeout_s,
            follow_redirects=False,  # a redirect could lead to an address the URL check never saw
            transport=transport,
            headers={"User-Agent": USER_AGENT},
        )
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        listener.listen(WEBHOOKS_CHANNEL, lambda _payload: self._wake.set())

    async def start(self) -> None:
        self._loop_task = asyncio.create_task(self._claim_loop(), name="webhook-dispatcher")

    async def stop(self, drain_s: float = 5.0) -> None:
        """Stop claiming; give deliveries in flight `drain_s` (the rest are retried after their lease)."""
        self._stopping.set()
        self._wake.set()
        if self._loop_task is not None:
            await self._loop_task
        await drain(self._tasks, drain_s)
        await self._client.aclose()

    async def _claim_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            free = self.config.concurrency - len(self._tasks)
            rows: list[Any] = []
            wait_s = self.config.poll_s
            try:
                async with self.pool.acquire() as conn:
                    if free > 0:
                        rows = await wq.claim_due(conn, limit=free, lease_s=self.config.timeout_s + _LEASE_MARGIN_S)
                    due_in = await wq.seconds_until_next_due(conn)
                if due_in is not None:
                    wait_s = min(wait_s, max(due_in, 0.0))
            except DATABASE_ERRORS as exc:
                log.warning("claiming webhooks failed: %s", exc)
            for row in rows:
                task = asyncio.create_task(self._deliver(row), name=f"webhook-{row['message_id']}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                task.add_done_callback(lambda _: self._wake.set())
            if rows and len(rows) == free:
                continue  # there may be more due right now; a finishing delivery wakes us when full
            # A message due now but not claimed is locked by another dispatcher: look again shortly.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(wait_s, 0.05))

    async def _deliver(self, row: Any) -> None:
        """One attempt; the outcome is written under the claim's fencing token. Its log lines carry the
        id of the request that created the job, as the delivery's X-Request-Id header does."""
        with bind(request_id=row["request_id"], tenant_id=str(row["tenant_id"]), job_id=None, engine=None):
            await self._deliver_logged(row)

    async def _deliver_logged(self, row: Any) -> None:
        failure = await self.attempt(row)
        attempt: int = row["attempts"]
        try:
            async with self.pool.acquire() as conn:
                if failure is None:
                    await wq.mark_delivered(conn, row["id"], attempt)
                    return
                retry = None
                if attempt < self.config.max_attempts:
                    retry = retry_delay(attempt, self.config, _jitter.random())
                else:
                    log.warning("webhook %s is dead after %d attempts: %s", row["message_id"], attempt, failure.detail)
                await wq.mark_failed(
                    conn, row["id"], attempt, error=failure.reason, detail=failure.detail, retry_in_s=retry
                )
        except DATABASE_ERRORS as exc:
            # Unrecorded: the claim's lease runs out and the message is tried again.
            log.warning("recording webhook %s failed: %s", row["message_id"], exc)

    async def attempt(self, row: Any) -> DeliveryFailure | None:
        """POST the message once, to the address its URL was checked at; None on a 2xx
        acknowledgement, else what went wrong."""
        url: str = row["url"]
        try:
            checked = await check_webhook_url(url, "webhook_url", self.allow_hosts)
        except ValidationFailed as exc:
            return DeliveryFailure(REFUSED, f"refused: {exc.detail}")
        body = message_body(row)
        timestamp = int(time.time())
        try:
            signature = sign(row["webhook_secret"], row["message_id"], timestamp, body)
        except ValueError as exc:
            return DeliveryFailure("the message could not be signed", f"cannot sign: {exc}")
        headers = {
            "Content-Type": "application/json",
            "webhook-id": row["message_id"],
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature,
        }
        if row.get("request_id"):  # a job's event: the id of the request that created the job
            headers[REQUEST_ID_HEADER] = row["request_id"]
        request = checked.request_args()
        headers.update(request.pop("headers", {}))
        try:
            # Streamed and never read: only the status matters, and a receiver cannot make us buffer a body.
            async with self._client.stream("POST", content=body, headers=headers, **request) as response:
                status = response.status_code
        except httpx.HTTPError as exc:
            return DeliveryFailure(UNREACHABLE, f"{type(exc).__name__}: {exc}"[:500])
        if 200 <= status < 300:
            return None
        return DeliveryFailure(f"HTTP {status}", f"HTTP {status}")
