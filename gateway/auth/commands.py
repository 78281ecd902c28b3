"""What the operator commands (`gateway tenants create`, `keys create`, `admin-keys create`) and the
first start do, given a pool. Each returns one flat, JSON-ready dict for `--json` or for printing
`key: value` lines; the secret is in it once, under `key`, and nowhere else (never logged).

Invalid input raises `ValidationFailed` or `NotFound`, whose `detail` is meant for the terminal.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from uuid import UUID

from gateway.auth import service
from gateway.auth.keys import SCOPES
from gateway.db import keys as q
from gateway.db.pool import Pool
from gateway.domain.money import from_credits, to_credits
from gateway.errors import ValidationFailed

DEMO_TENANT_NAME = "demo"
DEMO_CREDITS = 100.0
DEMO_KEY_FILE = "demo-key.txt"


def _millicredits(credits: float) -> int:
    try:
        amount = from_credits(credits)
    except ValueError as exc:
        raise ValidationFailed.field("credits", str(exc)) from exc
    if amount < 0:
        raise ValidationFailed.field("credits", "must not be negative")
    return amount


def _tenant_uuid(tenant_id: str | UUID) -> UUID:
    if isinstance(tenant_id, UUID):
        return tenant_id
    try:
        return UUID(tenant_id)
    except ValueError as exc:
        raise ValidationFailed.field("tenant", f"{tenant_id!r} is not a tenant id (a UUID)") from exc


def _key_fields(key: service.IssuedKey) -> dict[str, Any]:
    return {"key_id": str(key.id), "scopes": ",".join(key.scopes), "key": key.key}


async def create_tenant_cmd(pool: Pool, name: str, credits: float = 0.0) -> dict[str, Any]:
    """`gateway tenants create NAME [--credits N]`: the tenant, its wallet topped up, and a first key."""
    amount = _millicredits(credits)
    async with pool.acquire() as conn, conn.transaction():
        tenant_id, key = await service.create_tenant(conn, name=name, credits=amount)
    return {"tenant_id": str(tenant_id), "name": name.strip(), "credits": to_credits(amount), **_key_fields(key)}


async def create_key_cmd(pool: Pool, tenant_id: str | UUID, scopes: list[str] | None = None) -> dict[str, Any]:
    """`gateway keys create --tenant ID [--scopes S,...]`: a tenant key, every scope unless narrowed."""
    tenant = _tenant_uuid(tenant_id)
    spec = service.KeySpec(name="cli", scopes=list(SCOPES) if scopes is None else scopes)
    async with pool.acquire() as conn, conn.transaction():
        key = await service.create_tenant_key(conn, tenant_id=tenant, spec=spec)
    return {"tenant_id": str(tenant), **_key_fields(key)}


async def create_admin_key_cmd(pool: Pool, name: str = "operator") -> dict[str, Any]:
    """`gateway admin-keys create`: an operator key for `/v1/admin/*`."""
    async with pool.acquire() as conn, conn.transaction():
        key = await service.create_operator_key(conn, name=name)
    return {"key_id": str(key.id), "name": key.name, "key": key.key}


async def list_admin_keys_cmd(pool: Pool) -> list[dict[str, Any]]:
    """`gateway admin-keys list`: every operator key, without secrets."""
    async with pool.acquire() as conn:
        rows = await q.list_operator_keys(conn)
    return [{**dict(row), "id": str(row["id"])} for row in rows]


async def revoke_admin_key_cmd(pool: Pool, key_id: str) -> dict[str, Any]:
    """`gateway admin-keys revoke ID`: refused for the last active operator key."""
    try:
        ident = UUID(key_id)
    except ValueError as exc:
        raise ValidationFailed.field("key_id", f"{key_id!r} is not a key id (a UUID)") from exc
    async with pool.acquire() as conn, conn.transaction():
        row = await service.revoke_operator_key(conn, ident)
    return {"key_id": str(row["id"]), "name": row["name"], "revoked_at": row["revoked_at"]}


def _write_private(data_dir: Path, text: str) -> None:
    # Created 0600 from the first byte: a chmod after writing would leave a window where the
    # key is readable by others. A leftover file (from a deleted database) is replaced, not reused,
    # because O_CREAT keeps an existing file's mode.
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / DEMO_KEY_FILE
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


async def ensure_demo_tenant(pool: Pool, data_dir: Path) -> str | None:
    """On first start (no tenant exists yet): a "demo" tenant with 100 credits and a key, the key
    written to `data_dir/demo-key.txt` (mode 0600). Returns the key for the caller to print once;
    None on every later start."""
    async with pool.acquire() as conn, conn.transaction():
        # Two replicas starting at once against an empty database must not both create one.
        await q.lock_first_start(conn)
        if await q.any_tenant_exists(conn):
            return None
        _, key = await service.create_tenant(conn, name=DEMO_TENANT_NAME, credits=from_credits(DEMO_CREDITS))
        # Written before the commit: if the file cannot be written, no tenant is created and the
        # next start tries again, instead of leaving a demo tenant whose key nobody has.
        _write_private(data_dir, key.key + "\n")
    return key.key
