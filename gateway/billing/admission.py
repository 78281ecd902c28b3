"""Admission: price a request, reserve its credits and create the job, in ONE transaction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from gateway.auth.keys import Principal
from gateway.db import billing as bq
from gateway.db import jobs as jq
from gateway.db.pool import Pool
from gateway.domain.money import pick_rule, to_credits
from gateway.errors import InsufficientCredits, RateLimited


@dataclass(frozen=True)
class Admission:
    job_id: UUID
    unit_price: int
    reserved: int


@dataclass(frozen=True)
class InputBlob:
    role: str
    blob_key: str
    content_type: str
    width: int
    height: int


async def admit(
    pool: Pool,
    principal: Principal,
    *,
    job_id: UUID,
    operation: str,
    params: dict[str, Any],
    width: int,
    height: int,
    steps: int,
    n: int,
    model: str | None,
    allowed_engines: list[str] | None,
    password_hash: str | None,
    webhook_url: str | None,
    inputs: list[InputBlob],
    deadline_s: float,
    lease_owner: str | None,
    lease_s: float,
) -> Admission:
    """Reserve `n x unit price` and insert the job; 402 when the wallet cannot cover it,
    429 when the tenant already has its maximum of unfinished jobs."""
    assert principal.tenant_id is not None
    tenant_id = principal.tenant_id
    async with pool.acquire() as conn, conn.transaction():
        version, rules = await bq.current_price_rules(conn)
        unit = pick_rule(rules, operation, model).unit_price(width, height, steps)
        amount = unit * n
        wallet = await bq.lock_wallet(conn, tenant_id)
        if wallet["active_jobs"] >= wallet["max_concurrent_jobs"]:
            raise RateLimited(
                f"The tenant already has {wallet['active_jobs']} unfinished jobs"
                f" (limit {wallet['max_concurrent_jobs']}).",
                headers={"Retry-After": "1"},
                limit="concurrent_jobs",
            )
        available = wallet["balance"] - wallet["held"]
        if available < amount:
            raise InsufficientCredits(
                f"This request costs {to_credits(amount)} credits; {to_credits(available)} are available.",
                balance=to_credits(wallet["balance"]),
                available=to_credits(available),
                price=to_credits(amount),
                shortfall=to_credits(amount - available),
            )
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
        await jq.insert_job(
            conn,
            job_id=job_id,
            tenant_id=tenant_id,
            key_id=principal.key_id,
            operation=operation,
            params=params,
            n=n,
            unit_price=unit,
            price_version_id=version,
            allowed_engines=allowed_engines,
            password_hash=password_hash,
            webhook_url=webhook_url,
            deadline_s=deadline_s,
            lease_owner=lease_owner,
            lease_s=lease_s,
        )
        for blob in inputs:
            await jq.insert_input(
                conn,
                job_id=job_id,
                role=blob.role,
                blob_key=blob.blob_key,
                content_type=blob.content_type,
                width=blob.width,
                height=blob.height,
            )
        await bq.hold(conn, job_id=job_id, tenant_id=tenant_id, key_id=principal.key_id, amount=amount)
    return Admission(job_id=job_id, unit_price=unit, reserved=amount)
