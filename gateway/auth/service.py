"""Issuing, rotating and revoking keys; creating, suspending and crediting tenants.

Every function takes a connection and never opens its own transaction: the caller's unit of work
(a request, a CLI command) owns it, so a tenant, its wallet, its first top-up and its first key
are committed together or not at all. Amounts are integer millicredits here.

A secret exists in plaintext only in the `IssuedKey` returned to the caller, who shows it once;
the database receives its SHA-256 alone.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Literal
from uuid import UUID, uuid4

import msgspec

from gateway.auth import tokens
from gateway.auth.keys import SCOPES, Principal
from gateway.db import Conn
from gateway.db import billing as bq
from gateway.db import keys as q
from gateway.db.types import CheckViolationError, Row
from gateway.domain.money import to_credits
from gateway.errors import Conflict, NotFound, PermissionDenied, ValidationFailed

MAX_GRACE_PERIOD_S = 30 * 24 * 3600
DEFAULT_RATE_LIMIT_PER_MINUTE = 600
DEFAULT_MAX_CONCURRENT_JOBS = 16
FIRST_KEY_NAME = "default"
MAX_NAME_LENGTH = 200

CreditKind = Literal["topup", "adjustment"]


class IssuedKey(msgspec.Struct, frozen=True, kw_only=True):
    """A key just created or rotated. `key` is the secret: show it once, never store or log it."""

    id: UUID
    tenant_id: UUID | None
    name: str
    scopes: list[str]
    key: str
    hint: str

    def __repr__(self) -> str:
        # A stray log line or traceback must not carry the secret.
        return f"IssuedKey(id={self.id}, name={self.name!r}, hint=...{self.hint})"


class KeySpec(msgspec.Struct, frozen=True, kw_only=True):
    """What a new tenant key may do. `monthly_cap` is in millicredits."""

    name: str
    scopes: list[str]
    expires_at: datetime | None = None
    rate_limit_per_minute: int = DEFAULT_RATE_LIMIT_PER_MINUTE
    monthly_cap: int | None = None


def check_name(name: str, field: str = "name") -> str:
    """The name without surrounding blanks; 1 to 200 characters, as the schema requires."""
    name = name.strip()
    if not 1 <= len(name) <= MAX_NAME_LENGTH:
        raise ValidationFailed.field(field, f"must be 1 to {MAX_NAME_LENGTH} characters")
    return name


def normalize_scopes(scopes: Iterable[str]) -> list[str]:
    """The scopes deduplicated in canonical order; an unknown or empty set is a validation error."""
    wanted = set(scopes)
    unknown = sorted(wanted - set(SCOPES))
    if unknown:
        raise ValidationFailed.field("scopes", f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(SCOPES)}")
    if not wanted:
        raise ValidationFailed.field("scopes", "at least one scope is required")
    return [s for s in SCOPES if s in wanted]


def check_grantable(requested: Iterable[str], held: Iterable[str]) -> None:
    """A key may only hand out scopes it has itself, so a narrow key can never mint a wider one."""
    missing = sorted(set(requested) - set(held))
    if missing:
        raise PermissionDenied(
            f"A key can only create keys with a subset of its own scopes; it lacks {', '.join(missing)}.",
            missing_scopes=missing,
        )


def within_creator(spec: KeySpec, creator: Principal, *, rate_limit_given: bool) -> KeySpec:
    """The spec bounded by the creating key's own limits, so a key can never mint a looser one:
    no higher rate limit, no larger monthly cap, no later expiry. Omitted limits inherit the
    creator's; a limit given beyond it is refused with 422 naming the field. The API and the
    dashboard both create keys through this rule."""
    rate = spec.rate_limit_per_minute
    if rate > creator.rate_limit_per_minute:
        if rate_limit_given:
            raise ValidationFailed.field(
                "rate_limit_per_minute", f"must not exceed the creating key's {creator.rate_limit_per_minute}"
            )
        rate = creator.rate_limit_per_minute
    cap = spec.monthly_cap
    if creator.monthly_cap is not None:
        if cap is None:
            cap = creator.monthly_cap
        elif cap > creator.monthly_cap:
            raise ValidationFailed.field(
                "monthly_cap", f"must not exceed the creating key's {to_credits(creator.monthly_cap)} credits"
            )
    expires = spec.expires_at
    if creator.expires_at is not None:
        if expires is None:
            expires = creator.expires_at
        elif expires > creator.expires_at:
            raise ValidationFailed.field("expires_at", "must not be later than the creating key's expiry")
    return msgspec.structs.replace(spec, rate_limit_per_minute=rate, monthly_cap=cap, expires_at=expires)


def looser_than(target: Row, caller: Principal) -> list[str]:
    """What of the key `target` is beyond the caller's own limits (empty: it is within them).

    The same bounds `within_creator` puts on a new key: scopes a subset, rate limit, monthly cap and
    expiry no looser. Rotating a key hands out its secret, so a caller may only rotate keys it could
    have created itself."""
    looser = []
    if not set(target["scopes"]) <= caller.scopes:
        looser.append("scopes")
    if target["rate_limit_per_minute"] > caller.rate_limit_per_minute:
        looser.append("rate_limit_per_minute")
    if caller.monthly_cap is not None and (target["monthly_cap"] is None or target["monthly_cap"] > caller.monthly_cap):
        looser.append("monthly_cap")
    if caller.expires_at is not None and (target["expires_at"] is None or target["expires_at"] > caller.expires_at):
        looser.append("expires_at")
    return looser


async def create_tenant(
    conn: Conn,
    *,
    name: str,
    credits: int = 0,
    max_concurrent_jobs: int = DEFAULT_MAX_CONCURRENT_JOBS,
    operator_key_id: UUID | None = None,
) -> tuple[UUID, IssuedKey]:
    """A tenant, its wallet, an initial top-up ledger entry (when `credits` > 0) and a first key with
    every scope. Returns the tenant id and the key."""
    name = check_name(name)
    if credits < 0:
        raise ValidationFailed.field("credits", "must not be negative")
    tenant_id = uuid4()
    # Standard Webhooks secrets are "whsec_" + base64 of 24 to 64 random bytes: standard base64,
    # since the official verifiers decode it that way (URL-safe characters would give another key).
    webhook_secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    await q.insert_tenant(conn, tenant_id, name, webhook_secret, max_concurrent_jobs)
    if credits > 0:
        await bq.credit(
            conn,
            tenant_id=tenant_id,
            kind="topup",
            amount=credits,
            reason="initial credits",
            operator_key_id=operator_key_id,
        )
    key = await create_tenant_key(conn, tenant_id=tenant_id, spec=KeySpec(name=FIRST_KEY_NAME, scopes=list(SCOPES)))
    return tenant_id, key


async def create_tenant_key(
    conn: Conn,
    *,
    tenant_id: UUID,
    spec: KeySpec,
    created_by_key_id: UUID | None = None,
    grantable: Iterable[str] | None = None,
) -> IssuedKey:
    """A new key for the tenant. `grantable` is the creating key's scopes (None: an operator, who may
    grant any scope). The tenant must exist."""
    name = check_name(spec.name)
    scopes = normalize_scopes(spec.scopes)
    if grantable is not None:
        check_grantable(scopes, grantable)
    if spec.expires_at is not None and spec.expires_at <= datetime.now(UTC):
        raise ValidationFailed.field("expires_at", "must be in the future")
    if await q.get_tenant(conn, tenant_id) is None:
        raise NotFound("No such tenant.")
    secret = tokens.new_key("tenant")
    key_id = uuid4()
    await q.insert_tenant_key(
        conn,
        key_id=key_id,
        tenant_id=tenant_id,
        name=name,
        scopes=scopes,
        secret_hash=tokens.hash_key(secret),
        hint=tokens.hint(secret),
        expires_at=spec.expires_at,
        rate_limit_per_minute=spec.rate_limit_per_minute,
        monthly_cap=spec.monthly_cap,
        created_by_key_id=created_by_key_id,
    )
    return IssuedKey(id=key_id, tenant_id=tenant_id, name=name, scopes=scopes, key=secret, hint=tokens.hint(secret))


async def create_operator_key(conn: Conn, *, name: str = "operator") -> IssuedKey:
    """An operator key for `/v1/admin/*`."""
    name = check_name(name)
    secret = tokens.new_key("operator")
    key_id = uuid4()
    await q.insert_operator_key(
        conn, key_id=key_id, name=name, secret_hash=tokens.hash_key(secret), hint=tokens.hint(secret)
    )
    return IssuedKey(id=key_id, tenant_id=None, name=name, scopes=[], key=secret, hint=tokens.hint(secret))


async def revoke_operator_key(conn: Conn, key_id: UUID) -> Row:
    """Revoke an operator key (again: no change). The last active one is refused: nobody could
    administer the platform afterwards except from a shell with database access."""
    row = await q.revoke_operator_key(conn, key_id)
    if row is None:
        raise NotFound("No such operator key.")
    if row["refused"]:
        raise Conflict("This is the last active operator key; create another before revoking it.")
    return row


async def rotate(
    conn: Conn, *, tenant_id: UUID, key_id: UUID, caller: Principal | None, grace_period_s: int = 0
) -> IssuedKey:
    """A new secret for the key; the old one keeps working for `grace_period_s` (0: stops at once).

    Name, scopes and limits stay: they belong to the key, not to its secret. `caller` is the tenant
    key asking (None: an operator): it may rotate itself, or a key within its own limits
    (`looser_than`); anything else is refused with `PermissionDenied`, since the answer carries
    the key's new secret."""
    if not 0 <= grace_period_s <= MAX_GRACE_PERIOD_S:
        raise ValidationFailed.field("grace_period_s", f"must be between 0 and {MAX_GRACE_PERIOD_S} seconds")
    row = await q.get_tenant_key(conn, key_id, tenant_id, lock=True)
    if row is None:
        raise NotFound("No such key.")
    now = datetime.now(UTC)
    if row["revoked_at"] is not None:
        raise Conflict("A revoked key cannot be rotated.")
    if row["expires_at"] is not None and row["expires_at"] <= now:
        raise Conflict("An expired key cannot be rotated.")
    if caller is not None and caller.key_id != key_id:
        looser = looser_than(row, caller)
        if looser:
            raise PermissionDenied(
                "A key can only rotate itself or a key within its own scopes and limits; this key's "
                f"{', '.join(looser)} go beyond the caller's.",
                beyond_caller=looser,
            )
    await q.retire_secrets(conn, key_id, grace_period_s)
    secret = tokens.new_key("tenant")
    await q.insert_secret(conn, key_id=key_id, secret_hash=tokens.hash_key(secret), hint=tokens.hint(secret))
    return IssuedKey(
        id=key_id,
        tenant_id=tenant_id,
        name=row["name"],
        scopes=list(row["scopes"]),
        key=secret,
        hint=tokens.hint(secret),
    )


async def revoke(conn: Conn, *, tenant_id: UUID, key_id: UUID) -> None:
    """Revoke the tenant's key (every secret of it). Revoking twice is harmless."""
    if not await q.revoke_tenant_key(conn, key_id, tenant_id):
        raise NotFound("No such key.")


async def set_suspended(conn: Conn, *, tenant_id: UUID, suspended: bool) -> None:
    """Suspend (every key of the tenant stops authenticating) or resume a tenant."""
    if not await q.set_tenant_status(conn, tenant_id, "suspended" if suspended else "active"):
        raise NotFound("No such tenant.")


async def adjust_credits(
    conn: Conn, *, tenant_id: UUID, amount: int, kind: CreditKind, reason: str, operator_key_id: UUID | None
) -> Row:
    """A top-up (amount > 0) or an adjustment (either sign, not 0) as a ledger entry; returns the entry.

    Taking away credits that are held for running jobs, or more than the balance, is refused with
    `Conflict`: the wallet's check constraint is the single place that rule lives."""
    if not reason.strip():
        raise ValidationFailed.field("reason", "must not be empty")
    if amount == 0:
        raise ValidationFailed.field("amount", "must not be 0")
    if kind == "topup" and amount < 0:
        raise ValidationFailed.field("amount", "a top-up must be positive; use kind 'adjustment' to take credits away")
    try:
        await bq.credit(
            conn, tenant_id=tenant_id, kind=kind, amount=amount, reason=reason.strip(), operator_key_id=operator_key_id
        )
    except LookupError as exc:
        raise NotFound("No such tenant.") from exc
    except CheckViolationError as exc:
        if exc.constraint_name != "wallet_available_not_negative":
            raise
        raise Conflict(
            "The adjustment would take the wallet below the credits held for running jobs.",
        ) from exc
    return await q.last_ledger_entry(conn, tenant_id)
