"""The operator commands and the first-start demo tenant."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from uuid import uuid4

import pytest

from gateway.auth import commands
from gateway.auth.keys import SCOPES, KeyAuthenticator
from gateway.cli import main
from gateway.db.pool import Pool
from gateway.errors import Conflict, NotFound, Unauthenticated, ValidationFailed
from tests.integration.auth.secrets_dump import assert_no_secret, dump_values


async def test_tenants_create_returns_tenant_credits_and_a_working_key(
    auth_pool: Pool, authenticator: KeyAuthenticator
) -> None:
    result = await commands.create_tenant_cmd(auth_pool, "acme", 12.5)
    assert result["name"] == "acme"
    assert result["credits"] == 12.5
    assert result["scopes"] == ",".join(SCOPES)
    principal = await authenticator.authenticate(result["key"])
    assert str(principal.tenant_id) == result["tenant_id"]
    async with auth_pool.acquire() as conn:
        balance = await conn.fetchval("SELECT balance FROM wallets WHERE tenant_id = $1", principal.tenant_id)
    assert balance == 12_500


async def test_tenants_create_refuses_more_than_three_decimals(auth_pool: Pool) -> None:
    with pytest.raises(ValidationFailed):
        await commands.create_tenant_cmd(auth_pool, "acme", 1.0005)
    async with auth_pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM tenants") == 0


async def test_keys_create_narrows_scopes(auth_pool: Pool, authenticator: KeyAuthenticator) -> None:
    tenant = await commands.create_tenant_cmd(auth_pool, "acme", 0)
    result = await commands.create_key_cmd(auth_pool, tenant["tenant_id"], ["generate", "jobs:read"])
    principal = await authenticator.authenticate(result["key"])
    assert principal.scopes == {"generate", "jobs:read"}
    assert str(principal.tenant_id) == tenant["tenant_id"]


@pytest.mark.parametrize(
    ("tenant", "scopes", "error"),
    [("not-a-uuid", None, ValidationFailed), (str(uuid4()), None, NotFound), (None, ["root"], ValidationFailed)],
)
async def test_keys_create_refuses_bad_tenant_or_scope(
    auth_pool: Pool, tenant: str | None, scopes: list[str] | None, error: type[Exception]
) -> None:
    existing = await commands.create_tenant_cmd(auth_pool, "acme", 0)
    with pytest.raises(error):
        await commands.create_key_cmd(auth_pool, tenant or existing["tenant_id"], scopes)


async def test_admin_keys_create_returns_an_operator_key(auth_pool: Pool, authenticator: KeyAuthenticator) -> None:
    result = await commands.create_admin_key_cmd(auth_pool)
    principal = await authenticator.authenticate(result["key"])
    assert principal.kind == "operator"
    assert str(principal.key_id) == result["key_id"]


async def test_no_plaintext_key_is_stored_anywhere(auth_pool: Pool) -> None:
    tenant = await commands.create_tenant_cmd(auth_pool, "acme", 3)
    extra = await commands.create_key_cmd(auth_pool, tenant["tenant_id"], None)
    admin = await commands.create_admin_key_cmd(auth_pool)
    async with auth_pool.acquire() as conn:
        values = await dump_values(conn)
    assert_no_secret(values, [tenant["key"], extra["key"], admin["key"]])


async def test_demo_tenant_is_created_once_with_a_private_key_file(
    auth_pool: Pool, authenticator: KeyAuthenticator, data_dir: Path
) -> None:
    key = await commands.ensure_demo_tenant(auth_pool, data_dir)
    assert key is not None
    path = data_dir / "demo-key.txt"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == key
    principal = await authenticator.authenticate(key)
    async with auth_pool.acquire() as conn:
        tenant = await conn.fetchrow(
            "SELECT t.name, w.balance FROM tenants t JOIN wallets w ON w.tenant_id = t.id WHERE t.id = $1",
            principal.tenant_id,
        )
    assert tenant is not None
    assert tuple(tenant) == ("demo", 100_000)
    assert await commands.ensure_demo_tenant(auth_pool, data_dir) is None
    assert path.read_text().strip() == key


async def test_demo_key_file_left_over_with_loose_mode_is_replaced_private(auth_pool: Pool, data_dir: Path) -> None:
    path = data_dir / "demo-key.txt"
    path.write_text("stale")
    os.chmod(path, 0o644)
    key = await commands.ensure_demo_tenant(auth_pool, data_dir)
    assert key is not None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == key


async def test_no_demo_tenant_when_tenants_exist(auth_pool: Pool, data_dir: Path) -> None:
    await commands.create_tenant_cmd(auth_pool, "acme", 0)
    assert await commands.ensure_demo_tenant(auth_pool, data_dir) is None
    assert not (data_dir / "demo-key.txt").exists()


async def test_secret_scan_would_catch_a_key_stored_in_plaintext(auth_pool: Pool) -> None:
    tenant = await commands.create_tenant_cmd(auth_pool, "acme", 0)
    async with auth_pool.acquire() as conn:
        # Planted where a careless change might put it: a text column and a bytea column.
        await conn.execute("UPDATE tenants SET name = $1", "leak " + tenant["key"][4:])
        with pytest.raises(AssertionError):
            assert_no_secret(await dump_values(conn), [tenant["key"]])
        await conn.execute("UPDATE tenants SET name = 'acme'")
        await conn.execute("UPDATE api_key_secrets SET secret_hash = $1", tenant["key"].encode())
        with pytest.raises(AssertionError):
            assert_no_secret(await dump_values(conn), [tenant["key"]])


async def test_admin_keys_revoke_refuses_the_last_active_key(auth_pool: Pool, authenticator: KeyAuthenticator) -> None:
    first = await commands.create_admin_key_cmd(auth_pool, "first")
    second = await commands.create_admin_key_cmd(auth_pool, "second")
    revoked = await commands.revoke_admin_key_cmd(auth_pool, second["key_id"])
    assert revoked["revoked_at"] is not None
    with pytest.raises(Unauthenticated):
        await authenticator.authenticate(second["key"])
    with pytest.raises(Conflict):
        await commands.revoke_admin_key_cmd(auth_pool, first["key_id"])
    assert (await authenticator.authenticate(first["key"])).kind == "operator"
    listed = await commands.list_admin_keys_cmd(auth_pool)
    assert [(k["name"], k["revoked_at"] is None) for k in listed] == [("first", True), ("second", False)]
    assert first["key"] not in repr(listed)
    assert second["key"] not in repr(listed)
    with pytest.raises(NotFound):
        await commands.revoke_admin_key_cmd(auth_pool, str(uuid4()))


def test_cli_prints_a_refusal_without_a_traceback(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GATEWAY_DATABASE_URL", database_url)
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path))
    assert main(["keys", "create", "--tenant", "not-a-uuid"]) == 2
    err = capsys.readouterr().err
    assert "tenant" in err
    assert "Traceback" not in err
