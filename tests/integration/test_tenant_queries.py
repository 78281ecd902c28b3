"""Tenant queries fail closed: called without a tenant id they raise, never answer every tenant's rows.

Operators read across tenants through queries of their own (`platform_usage_*`, `usage_report`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import date, timedelta
from typing import Any
from uuid import uuid4

import pytest

from gateway.api import usage, views
from gateway.auth.keys import Principal
from gateway.db import billing as bq
from gateway.db import files as fq
from gateway.db import generations as gq
from gateway.db import jobs as jq
from gateway.db import keys as kq
from gateway.db import webhooks as wq
from tests.conftest import Gateway
from tests.e2e.test_generation_billing import T2I, auth

TODAY = date.today()
WEEK_AGO = TODAY - timedelta(days=7)


def tenant_queries(job_id: Any, key_id: Any) -> dict[str, Callable[[Any], Awaitable[Any]]]:
    """Each tenant query, called with `None` where its tenant id goes."""
    return {
        "jobs.get_job": lambda c: jq.get_job(c, job_id, None),  # type: ignore[arg-type]
        "jobs.job_status": lambda c: jq.job_status(c, job_id, None),  # type: ignore[arg-type]
        "jobs.list_jobs": lambda c: jq.list_jobs(
            c,
            None,  # type: ignore[arg-type]
            before=None,
            state=None,
            operation=None,
            limit=10,
        ),
        "jobs.request_cancel": lambda c: jq.request_cancel(c, job_id, None),  # type: ignore[arg-type]
        "generations.job_with_details": lambda c: gq.job_with_details(c, job_id, None),  # type: ignore[arg-type]
        "views.load_job_view": lambda c: views.load_job_view(c, job_id, None),  # type: ignore[arg-type]
        "billing.usage_totals": lambda c: bq.usage_totals(c, None, WEEK_AGO, TODAY, ["day"]),  # type: ignore[arg-type]
        "billing.ledger_page": lambda c: bq.ledger_page(c, None, None, 10),  # type: ignore[arg-type]
        "usage.usage_rows": lambda c: usage.usage_rows(c, None, WEEK_AGO, TODAY, ["day"]),  # type: ignore[arg-type]
        "files.job_password": lambda c: fq.job_password(c, job_id, None),  # type: ignore[arg-type]
        "keys.list_tenant_keys": lambda c: kq.list_tenant_keys(c, None),  # type: ignore[arg-type]
        "keys.get_tenant_key": lambda c: kq.get_tenant_key(c, key_id, None),  # type: ignore[arg-type]
        "keys.revoke_tenant_key": lambda c: kq.revoke_tenant_key(c, key_id, None),  # type: ignore[arg-type]
        "webhooks.messages_for": lambda c: wq.messages_for(c, None),  # type: ignore[arg-type]
    }


async def test_every_tenant_query_without_a_tenant_raises_instead_of_answering(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    job = (await gateway.client.post("/v1/text-to-image", json=T2I, headers=auth(key))).json()
    async with gateway.pool.acquire() as conn:
        key_id = await conn.fetchval("SELECT id FROM api_keys LIMIT 1")
        for name, query in tenant_queries(job["id"], key_id).items():
            with pytest.raises(TypeError, match="tenant id"):
                await query(conn)
            assert await conn.fetchval("SELECT revoked_at FROM api_keys WHERE id = $1", key_id) is None, name
        # The operators' own queries do read across tenants.
        assert await usage.platform_usage_rows(conn, WEEK_AGO, TODAY, ["day"])


def test_an_operator_principal_has_no_tenant_to_query_with() -> None:
    operator = Principal("operator", uuid4(), None, frozenset(), rate_limit_per_minute=1)
    with pytest.raises(TypeError, match="tenant id"):
        _ = operator.tenant
