"""The key and tenant services against a real database, through the authenticator that enforces them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from gateway.auth import service
from gateway.auth.keys import SCOPES, KeyAuthenticator
from gateway.db.pool import Pool
from gateway.errors import Conflict, NotFound, PermissionDenied, Unauthenticated, ValidationFailed
from tests.waiting import eventually


async def _tenant(pool: Pool, credits: int = 5_000) -> tuple[service.IssuedKey, service.IssuedKey]:
    """A tenant's first key and an operator key."""
    async with pool.acquire() as conn, conn.transaction():
        operator = await service.create_operator_key(conn)
        _, key = await service.create_tenant(conn, name="acme", credits=credits, operator_key_id=operator.id)
    return key, operator


async def test_new_tenant_has_wallet_topup_entry_and_a_key_with_every_scope(
    auth_pool: Pool, authenticator: KeyAuthenticator
) -> None:
    key, operator = await _tenant(auth_pool, credits=12_345)
    async with auth_pool.acquire() as conn:
        wallet = await conn.fetchrow("SELECT balance, held FROM wallets WHERE tenant_id = $1", key.tenant_id)
        entries = await conn.fetch(
            "SELECT kind, amount, operator_key_id FROM ledger_entries WHERE tenant_id = $1", key.tenant_id
        )
    assert wallet is not None
    assert (wallet["balance"], wallet["held"]) == (12_345, 0)
    assert [tuple(e) for e in entries] == [("topup", 12_345, operator.id)]
    principal = await authenticator.authenticate(key.key)
    assert principal.tenant_id == key.tenant_id
    assert principal.scopes == frozenset(SCOPES)


async def test_tenant_without_credits_has_no_ledger_entry(auth_pool: Pool) -> None:
    key, _ = await _tenant(auth_pool, credits=0)
    async with auth_pool.acquire() as conn:
        count = await conn.fetchval("SELECT count(*) FROM ledger_entries WHERE tenant_id = $1", key.tenant_id)
    assert count == 0


async def test_issued_key_repr_hides_the_secret(auth_pool: Pool) -> None:
    key, operator = await _tenant(auth_pool)
    assert key.key not in repr(key)
    assert operator.key not in repr(operator)


async def test_key_cannot_grant_scopes_it_lacks(auth_pool: Pool) -> None:
    key, _ = await _tenant(auth_pool)
    assert key.tenant_id is not None
    async with auth_pool.acquire() as conn:
        with pytest.raises(PermissionDenied):
            await service.create_tenant_key(
                conn,
                tenant_id=key.tenant_id,
                spec=service.KeySpec(name="wide", scopes=["generate", "keys:manage"]),
                grantable={"generate"},
            )
        narrow = await service.create_tenant_key(
            conn,
            tenant_id=key.tenant_id,
            spec=service.KeySpec(name="narrow", scopes=["generate", "generate"]),
            grantable={"generate", "jobs:read"},
        )
    assert narrow.scopes == ["generate"]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (service.KeySpec(name="x", scopes=["admin"]), "scopes"),
        (service.KeySpec(name="x", scopes=[]), "scopes"),
        (service.KeySpec(name="  ", scopes=["generate"]), "name"),
        (service.KeySpec(name="x", scopes=["generate"], expires_at=datetime(2001, 1, 1, tzinfo=UTC)), "expires_at"),
    ],
)
async def test_invalid_key_specs_are_refused_by_field(auth_pool: Pool, spec: service.KeySpec, field: str) -> None:
    key, _ = await _tenant(auth_pool)
    assert key.tenant_id is not None
    async with auth_pool.acquire() as conn:
        with pytest.raises(ValidationFailed) as info:
            await service.create_tenant_key(conn, tenant_id=key.tenant_id, spec=spec)
    assert info.value.errors is not None
    assert info.value.errors[0].field == field


async def test_rotation_keeps_old_secret_for_the_grace_period_then_refuses_it(
    auth_pool: Pool, authenticator: KeyAuthenticator
) -> None:
    old, _ = await _tenant(auth_pool)
    assert old.tenant_id is not None
    async with auth_pool.acquire() as conn, conn.transaction():
        new = await service.rotate(conn, tenant_id=old.tenant_id, key_id=old.id, caller=None, grace_period_s=1)
    assert new.id == old.id
    assert new.key != old.key
    assert (await authenticator.authenticate(old.key)).key_id == old.id
    assert (await authenticator.authenticate(new.key)).key_id == old.id

    async def old_refused() -> bool:
        try:
            await authenticator.authenticate(old.key)
        except Unauthenticated:
            return True
        return False

    await eventually(old_refused, timeout_s=5, what="the old secret refused once its grace period ended")
    assert (await authenticator.authenticate(new.key)).key_id == old.id


async def test_rotation_without_grace_retires_old_secret_at_once(
    auth_pool: Pool, authenticator: KeyAuthenticator
) -> None:
    old, _ = await _tenant(auth_pool)
    assert old.tenant_id is not None
    async with auth_pool.acquire() as conn, conn.transaction():
        new = await service.rotate(conn, tenant_id=old.tenant_id, key_id=old.id, caller=None)
    with pytest.raises(Unauthenticated):
        await authenticator.authenticate(old.key)
    await authenticator.authenticate(new.key)


async def test_second_rotation_never_extends_an_older_secrets_grace(auth_pool: Pool) -> None:
    first, _ = await _tenant(auth_pool)
    assert first.tenant_id is not None
    async with auth_pool.acquire() as conn, conn.transaction():
        await service.rotate(conn, tenant_id=first.tenant_id, key_id=first.id, caller=None, grace_period_s=60)
        await service.rotate(conn, tenant_id=first.tenant_id, key_id=first.id, caller=None, grace_period_s=3600)
        rows = await conn.fetch(
            "SELECT hint, retires_at - now() AS left FROM api_key_secrets WHERE key_id = $1 ORDER BY created_at",
            first.id,
        )
    assert len(rows) == 3
    assert rows[0]["left"] <= timedelta(seconds=60)
    assert timedelta(seconds=3500) < rows[1]["left"] <= timedelta(seconds=3600)
    assert rows[2]["left"] is None


async def test_grace_period_over_thirty_days_is_refused(auth_pool: Pool) -> None:
    key, _ = await _tenant(auth_pool)
    assert key.tenant_id is not None
    async with auth_pool.acquire() as conn:
        with pytest.raises(ValidationFailed):
            await service.rotate(
                conn,
                tenant_id=key.tenant_id,
                key_id=key.id,
                caller=None,
                grace_period_s=service.MAX_GRACE_PERIOD_S + 1,
            )


async def test_revoked_key_is_refused_and_cannot_be_rotated(auth_pool: Pool, authenticator: KeyAuthenticator) -> None:
    key, _ = await _tenant(auth_pool)
    assert key.tenant_id is not None
    async with auth_pool.acquire() as conn:
        await service.revoke(conn, tenant_id=key.tenant_id, key_id=key.id)
        await service.revoke(conn, tenant_id=key.tenant_id, key_id=key.id)
        with pytest.raises(Conflict):
            await service.rotate(conn, tenant_id=key.tenant_id, key_id=key.id, caller=None)
    with pytest.raises(Unauthenticated):
        await authenticator.authenticate(key.key)


async def test_another_tenants_key_is_not_found(auth_pool: Pool) -> None:
    mine, _ = await _tenant(auth_pool)
    theirs, _ = await _tenant(auth_pool)
    assert mine.tenant_id is not None
    async with auth_pool.acquire() as conn:
        with pytest.raises(NotFound):
            await service.rotate(conn, tenant_id=mine.tenant_id, key_id=theirs.id, caller=None)
        with pytest.raises(NotFound):
            await service.revoke(conn, tenant_id=mine.tenant_id, key_id=theirs.id)
        revoked = await conn.fetchval("SELECT revoked_at FROM api_keys WHERE id = $1", theirs.id)
    assert revoked is None


async def test_suspended_tenant_is_refused_until_resumed(auth_pool: Pool, authenticator: KeyAuthenticator) -> None:
    key, _ = await _tenant(auth_pool)
    assert key.tenant_id is not None
    async with auth_pool.acquire() as conn:
        await service.set_suspended(conn, tenant_id=key.tenant_id, suspended=True)
        with pytest.raises(Unauthenticated):
            await authenticator.authenticate(key.key)
        await service.set_suspended(conn, tenant_id=key.tenant_id, suspended=False)
    await authenticator.authenticate(key.key)


async def test_adjustment_below_held_credits_is_a_conflict_and_changes_nothing(auth_pool: Pool) -> None:
    key, operator = await _tenant(auth_pool, credits=5_000)
    assert key.tenant_id is not None
    async with auth_pool.acquire() as conn:
        await conn.execute("UPDATE wallets SET held = 4_000 WHERE tenant_id = $1", key.tenant_id)
        with pytest.raises(Conflict):
            async with conn.transaction():
                await service.adjust_credits(
                    conn,
                    tenant_id=key.tenant_id,
                    amount=-1_001,
                    kind="adjustment",
                    reason="refund reversal",
                    operator_key_id=operator.id,
                )
        entry = await service.adjust_credits(
            conn,
            tenant_id=key.tenant_id,
            amount=-1_000,
            kind="adjustment",
            reason="refund reversal",
            operator_key_id=operator.id,
        )
        balance = await conn.fetchval("SELECT balance FROM wallets WHERE tenant_id = $1", key.tenant_id)
        total = await conn.fetchval("SELECT sum(amount) FROM ledger_entries WHERE tenant_id = $1", key.tenant_id)
    assert (entry["kind"], entry["amount"], entry["balance_after"]) == ("adjustment", -1_000, 4_000)
    assert entry["operator_key_id"] == operator.id
    assert balance == total == 4_000


@pytest.mark.parametrize(
    ("amount", "kind", "reason", "field"),
    [(0, "adjustment", "x", "amount"), (-5, "topup", "x", "amount"), (5, "topup", "   ", "reason")],
)
async def test_invalid_credit_changes_are_refused(
    auth_pool: Pool, amount: int, kind: service.CreditKind, reason: str, field: str
) -> None:
    key, _ = await _tenant(auth_pool)
    assert key.tenant_id is not None
    async with auth_pool.acquire() as conn:
        with pytest.raises(ValidationFailed) as info:
            await service.adjust_credits(
                conn, tenant_id=key.tenant_id, amount=amount, kind=kind, reason=reason, operator_key_id=None
            )
    assert info.value.errors is not None
    assert info.value.errors[0].field == field


async def test_credits_for_unknown_tenant_is_not_found(auth_pool: Pool) -> None:
    async with auth_pool.acquire() as conn:
        with pytest.raises(NotFound):
            await service.adjust_credits(
                conn, tenant_id=uuid4(), amount=5, kind="topup", reason="x", operator_key_id=None
            )
