"""Dashboard sessions: a pasted key exchanged for a server-side session, and CSRF tokens.

The browser holds a random token in an HttpOnly, SameSite=Strict cookie (Secure behind https);
the database holds its SHA-256, the key it signed in with and the session's CSRF token. Every
request re-checks that key with the API's own rules, so a revoked, expired or rotated-out key, or
a suspended tenant, ends its sessions (on other replicas within the key cache TTL). Sessions end
after `dashboard_session_ttl_s` whatever happens.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from litestar import Request
from litestar.datastructures import Cookie, FormMultiDict

from gateway.auth.keys import Principal
from gateway.db import dashboard as dq
from gateway.errors import PermissionDenied, Unauthenticated
from gateway.state import Services

SESSION_COOKIE = "gw_session"
# Before sign-in there is no session to hold a CSRF token, so the sign-in form uses a double-submit cookie.
SIGN_IN_CSRF_COOKIE = "gw_sign_in_csrf"
COOKIE_PATH = "/dashboard"
CSRF_FIELD = "csrf_token"


@dataclass(frozen=True)
class DashboardSession:
    """A signed-in browser: who it is (the key's principal) and its CSRF token."""

    token_hash: bytes
    principal: Principal
    csrf_token: str
    expires_at: datetime

    @property
    def is_operator(self) -> bool:
        return self.principal.kind == "operator"

    @property
    def tenant_id(self) -> UUID | None:
        return self.principal.tenant_id


class SignInRequired(Exception):
    """No live session: the browser is sent to the sign-in page, told `reason` when there is one."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


class CsrfRefused(PermissionDenied):
    """A form came without this session's CSRF token: refused before it is acted on."""

    slug, title = "csrf-refused", "The form's security token is missing or wrong"


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def behind_https(request: Request[Any, Any, Any]) -> bool:
    """Whether the browser reached us over https (directly, or through a proxy that says so)."""
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto", "").lower() == "https"


def cookie(request: Request[Any, Any, Any], name: str, value: str, max_age: int) -> Cookie:
    """A dashboard cookie: HttpOnly, SameSite=Strict, Secure behind https, only sent to /dashboard."""
    return Cookie(
        key=name,
        value=value,
        max_age=max_age,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=behind_https(request),
    )


def expired_cookie(request: Request[Any, Any, Any], name: str) -> Cookie:
    return cookie(request, name, "", 0)


async def start_session(services: Services, principal: Principal, secret_hash: bytes) -> str:
    """A new session for a key that just authenticated; returns the cookie token (shown to no one else)."""
    token = new_token()
    async with services.pool.acquire() as conn, conn.transaction():
        await dq.delete_expired_sessions(conn)
        await dq.insert_session(
            conn,
            token_hash=token_hash(token),
            kind=principal.kind,
            key_id=principal.key_id,
            secret_hash=secret_hash,
            csrf_token=new_token(),
            ttl_s=services.settings.dashboard_session_ttl_s,
        )
    return token


async def end_session(services: Services, session: DashboardSession) -> None:
    async with services.pool.acquire() as conn:
        await dq.delete_session(conn, session.token_hash)


async def current_session(request: Request[Any, Any, Any]) -> DashboardSession:
    """Dependency: the browser's live session, or `SignInRequired`."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        raise SignInRequired()
    services: Services = request.app.state.services
    hashed = token_hash(token)
    async with services.pool.acquire() as conn:
        row = await dq.live_session(conn, hashed)
    if row is None:
        raise SignInRequired("Your session has ended; sign in again.")
    try:
        principal = await services.auth.authenticate_hash(row["kind"], row["secret_hash"])
    except Unauthenticated:
        async with services.pool.acquire() as conn:
            await dq.delete_session(conn, hashed)
        raise SignInRequired(
            "The key this session signed in with no longer works (revoked, expired or rotated out)."
        ) from None
    return DashboardSession(
        token_hash=hashed, principal=principal, csrf_token=row["csrf_token"], expires_at=row["expires_at"]
    )


def same_token(sent: object, expected: str) -> bool:
    return isinstance(sent, str) and bool(expected) and hmac.compare_digest(sent.encode(), expected.encode())


async def checked_form(request: Request[Any, Any, Any], session: DashboardSession) -> FormMultiDict:
    """The posted form, once its CSRF token matches the session's; otherwise `CsrfRefused`."""
    form = await request.form()
    if not same_token(form.get(CSRF_FIELD), session.csrf_token):
        raise CsrfRefused("The form's security token is missing or wrong; reload the page and try again.")
    return form
