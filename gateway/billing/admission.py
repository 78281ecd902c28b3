"""Admission: price a request, reserve its credits and create the job, in ONE transaction.

The usual case is one statement, one round trip (gateway/db/generations.py): the price rules come
from a per-app cache keyed by price version, and the statement admits only if that version is still
the newest, so a price change is never missed (a stale cache costs one retry). A key with a monthly
cap runs the same statement inside a transaction that first locks the wallet, since its spend this
month must be read under that lock.
"""

from __future__ import annotations

import asyncio
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from uuid import UUID

from gateway.auth.keys import Principal
from gateway.billing.batching import AdmissionBatcher
from gateway.db import Conn
from gateway.db import billing as bq
from gateway.db import generations as gq
from gateway.db.pool import Pool
from gateway.db.types import Row
from gateway.domain.money import PriceRule, pick_rule, to_credits
from gateway.errors import InsufficientCredits, RateLimited
from gateway.observability.context import current_request_id
from gateway.observability.tracing import Attributes, span, traceparent

# Price versions that may change between the cache read and the admission statement before we stop
# trusting the cache for this request (only a burst of price changes gets there).
_PRICE_RETRIES = 3


@dataclass(frozen=True)
class Admission:
    job_id: UUID
    unit_price: int
    reserved: int
    # The admitted job's row (gateway/db/jobs.JOB_COLUMNS), so a sync request need not read it back.
    job: Row | None = None


@dataclass
class PriceCache:
    """The newest price version and its rules, as last read. Never trusted blindly: the admission
    statement checks the version it was priced with."""

    version: int | None = None
    rules: list[PriceRule] = field(default_factory=list)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def get(self, pool: Pool, *, refresh: bool = False) -> tuple[int, list[PriceRule]]:
        if self.version is None or refresh:
            async with self._lock, pool.acquire() as conn:
                self.version, self.rules = await bq.current_price_rules(conn)
        assert self.version is not None
        return self.version, self.rules


@dataclass(frozen=True)
class InputBlob:
    role: str
    blob_key: str
    content_type: str
    width: int
    height: int


@dataclass(frozen=True, kw_only=True)
class JobRequest:
    """What admission needs to price, reserve and create one job (width/height/steps price it)."""

    job_id: UUID
    operation: str
    params: dict[str, Any]
    width: int
    height: int
    steps: int
    n: int
    model: str | None
    allowed_engines: list[str] | None
    password_hash: str | None
    webhook_url: str | None
    inputs: list[InputBlob]
    deadline_s: float
    lease_owner: str | None
    lease_s: float


async def admit(
    pool: Pool,
    principal: Principal,
    spec: JobRequest,
    *,
    prices: PriceCache | None = None,
    batcher: AdmissionBatcher | None = None,
) -> Admission:
    """Reserve `n x unit price` and insert the job; 402 when the wallet cannot cover it,
    429 when the tenant already has its maximum of unfinished jobs. With `batcher`, the statement
    waits for the tenant's wallet gate and may share a statement with others (batching.py).

    The job records the current request's id and trace context (its run links back to them)."""
    attributes: Attributes = {
        "gateway.tenant_id": str(principal.tenant_id),
        "gateway.job_id": str(spec.job_id),
        "gateway.operation": spec.operation,
        "gateway.images_requested": spec.n,
    }
    # Taken before the admission's own span opens: the job's run links to the request's span.
    origin = Origin(current_request_id(), traceparent())
    with span("billing.admission", attributes) as current:
        admission = await _admit(pool, principal, spec, prices=prices, batcher=batcher, origin=origin)
        current.set_attributes({"gateway.unit_price": admission.unit_price, "gateway.reserved": admission.reserved})
        return admission


async def _admit(
    pool: Pool,
    principal: Principal,
    spec: JobRequest,
    *,
    prices: PriceCache | None,
    batcher: AdmissionBatcher | None,
    origin: Origin,
) -> Admission:
    assert principal.tenant_id is not None
    if prices is not None and principal.monthly_cap is None:
        for attempt in range(_PRICE_RETRIES):
            version, rules = await prices.get(pool, refresh=attempt > 0)
            unit = pick_rule(rules, spec.operation, spec.model).unit_price(spec.width, spec.height, spec.steps)
            args = admit_args(principal, spec, version, unit, origin)
            if batcher is not None:
                row = await batcher.admit(principal.tenant_id, args)
            else:
                async with pool.acquire() as conn:
                    row = await gq.admit_job(conn, args)
            if row["id"] is not None:
                return Admission(job_id=spec.job_id, unit_price=unit, reserved=unit * spec.n, job=row)
            if row["current_price_version"] != version:
                continue  # priced with an old version: price again
            _refuse(
                row["wallet_active_jobs"],
                row["wallet_max_concurrent_jobs"],
                row["wallet_balance"],
                row["wallet_held"],
                unit * spec.n,
            )
            raise AssertionError("the admission statement refused a request that passes every check")
    turn = batcher.gate.hold(principal.tenant_id) if batcher is not None else nullcontext()
    async with turn, pool.acquire() as conn, conn.transaction():
        return await _admit_locked(conn, principal, spec, origin)


class Origin(NamedTuple):
    """The request a job comes from: its X-Request-Id, and its span as `traceparent` (tracing on)."""

    request_id: str | None = None
    traceparent: str | None = None


def admit_args(principal: Principal, spec: JobRequest, version: int, unit: int, origin: Origin) -> gq.AdmitArgs:
    """The admission statement's arguments for `spec`, priced at `unit` under `version`."""
    assert principal.tenant_id is not None
    return gq.AdmitArgs(
        job_id=spec.job_id,
        tenant_id=principal.tenant_id,
        key_id=principal.key_id,
        operation=spec.operation,
        params=spec.params,
        n=spec.n,
        unit_price=unit,
        price_version_id=version,
        amount=unit * spec.n,
        allowed_engines=spec.allowed_engines,
        password_hash=spec.password_hash,
        webhook_url=spec.webhook_url,
        deadline_s=spec.deadline_s,
        lease_owner=spec.lease_owner,
        lease_s=spec.lease_s,
        inputs=[gq.Input(b.role, b.blob_key, b.content_type, b.width, b.height) for b in spec.inputs],
        request_id=origin.request_id,
        traceparent=origin.traceparent,
    )


def _refuse(active_jobs: int, max_jobs: int, balance: int, held: int, amount: int) -> None:
    """Raise the error for a request the wallet cannot take; return when it can."""
    if active_jobs >= max_jobs:
        raise RateLimited(
            f"The tenant already has {active_jobs} unfinished jobs (limit {max_jobs}).",
            headers={"Retry-After": "1"},
            limit="concurrent_jobs",
        )
    available = balance - held
    if available < amount:
        raise InsufficientCredits(
            f"This request costs {to_credits(amount)} credits; {to_credits(available)} are available.",
            balance=to_credits(balance),
            available=to_credits(available),
            price=to_credits(amount),
            shortfall=to_credits(amount - available),
        )


async def _admit_locked(conn: Conn, principal: Principal, spec: JobRequest, origin: Origin) -> Admission:
    """Admission inside the caller's transaction, for what must be read under the wallet lock (a
    key's spend this month). The price book is share-locked first, so the version read here is still
    the newest when the admission statement checks it (a price publish waits for this transaction)."""
    assert principal.tenant_id is not None
    await bq.lock_price_book(conn)
    version, rules = await bq.current_price_rules(conn)
    unit = pick_rule(rules, spec.operation, spec.model).unit_price(spec.width, spec.height, spec.steps)
    amount = unit * spec.n
    wallet = await bq.lock_wallet(conn, principal.tenant_id)
    _refuse(wallet.active_jobs, wallet.max_concurrent_jobs, wallet.balance, wallet.held, amount)
    if principal.monthly_cap is not None:
        spent = await bq.key_month_spend(conn, principal.key_id)
        if spent + amount > principal.monthly_cap:
            raise InsufficientCredits(
                "This key's monthly credit cap would be exceeded.",
                monthly_cap=to_credits(principal.monthly_cap),
                spent_this_month=to_credits(spent),
                price=to_credits(amount),
                shortfall=to_credits(spent + amount - principal.monthly_cap),
            )
    row = await gq.admit_job(conn, admit_args(principal, spec, version, unit, origin))
    if row["id"] is None:  # the wallet and the price book are locked: every check above still holds
        raise AssertionError("the admission statement refused a request that passes every check")
    return Admission(job_id=spec.job_id, unit_price=unit, reserved=amount, job=row)
