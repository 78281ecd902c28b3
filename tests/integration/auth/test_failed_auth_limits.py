"""Failed authentications are limited per client address, and the key cache forgets entry by entry."""

from __future__ import annotations

from typing import Any

from gateway.auth import service, tokens
from gateway.auth.keys import FAILED_AUTH_PER_MINUTE, KeyAuthenticator
from gateway.db.pool import Pool
from tests.conftest import Gateway
from tests.integration.auth.test_authentication_api import bearer
from tests.integration.dashboard.test_dashboard_http import csrf_of


async def test_an_address_over_its_failed_authentications_is_refused_before_any_lookup(
    make_gateway: Any,
) -> None:
    gateway: Gateway = await make_gateway(key_cache_ttl_s=300)
    tenant_id, known = await gateway.tenant()
    assert (await gateway.client.get("/v1/balance", headers=bearer(known))).status_code == 200
    for _ in range(FAILED_AUTH_PER_MINUTE):
        guess = await gateway.client.get("/v1/balance", headers=bearer(tokens.new_key("tenant")))
        assert guess.status_code == 401
    limited = await gateway.client.get("/v1/balance", headers=bearer(tokens.new_key("tenant")))
    assert limited.status_code == 429
    assert limited.headers["content-type"].startswith("application/problem+json")
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.json()["limit"] == "failed_authentications"
    # The refused guess cost no lookup: it is not in the authenticator's cache.
    auth = gateway.app.state.services.auth
    lookups_before = len(auth._cache)
    assert (await gateway.client.get("/v1/balance", headers=bearer(tokens.new_key("tenant")))).status_code == 429
    assert len(auth._cache) == lookups_before
    # A key this replica knows still works from the same address; one it would have to look up waits.
    assert (await gateway.client.get("/v1/balance", headers=bearer(known))).status_code == 200
    other = await gateway.key(tenant_id)
    assert (await gateway.client.get("/v1/balance", headers=bearer(other))).status_code == 429
    # The dashboard's sign-in form counts against the same limit.
    gateway.client.follow_redirects = False
    form = await gateway.client.get("/dashboard/sign-in")
    signed = await gateway.client.post("/dashboard/sign-in", data={"csrf_token": csrf_of(form.text), "key": other})
    assert signed.status_code == 429
    assert "Too many failed authentications" in signed.text


class CountingPool:
    """The pool, counting connections taken (one per key lookup)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.acquired = 0

    def acquire(self) -> Any:
        self.acquired += 1
        return self.pool.acquire()


async def test_a_full_key_cache_evicts_the_least_recently_used_entry_only(auth_pool: Pool) -> None:
    keys = []
    async with auth_pool.acquire() as conn, conn.transaction():
        tenant_id, first = await service.create_tenant(conn, name="acme")
        keys.append(first.key)
        for name in ("b", "c", "d"):
            spec = service.KeySpec(name=name, scopes=["generate"])
            keys.append((await service.create_tenant_key(conn, tenant_id=tenant_id, spec=spec)).key)
    a, b, c, d = keys
    pool = CountingPool(auth_pool)
    authenticator = KeyAuthenticator(pool=pool, ttl_s=300, cache_limit=3)  # type: ignore[arg-type]
    for key in (a, b, c):
        await authenticator.authenticate(key)
    assert pool.acquired == 3
    await authenticator.authenticate(a)  # a is now the most recently used
    await authenticator.authenticate(d)  # full: b, the least recently used, goes
    assert pool.acquired == 4
    for key in (a, c, d):
        await authenticator.authenticate(key)
    assert pool.acquired == 4, "the other entries stayed"
    await authenticator.authenticate(b)
    assert pool.acquired == 5
