"""Sign-in (a pasted key for a session), sign-out, the landing redirect and the stylesheet."""

from __future__ import annotations

from importlib import resources
from typing import Any

from litestar import Request, Response, get, post
from litestar.di import NamedDependency

from gateway.auth import tokens
from gateway.dashboard import pages
from gateway.dashboard.sessions import (
    SESSION_COOKIE,
    SIGN_IN_CSRF_COOKIE,
    DashboardSession,
    checked_form,
    cookie,
    end_session,
    expired_cookie,
    new_token,
    same_token,
    start_session,
)
from gateway.errors import RateLimited, Unauthenticated
from gateway.state import Services

_SIGN_IN_FORM_TTL_S = 3600


@get("/", name="dashboard")
async def landing(session: NamedDependency[DashboardSession]) -> Response[Any]:
    """Operators land on the platform view, tenants on their own."""
    return pages.see_other("/dashboard/admin" if session.is_operator else "/dashboard/overview")


def _sign_in_page(request: Request[Any, Any, Any], *, status: int = 200, error: str | None = None) -> Response[str]:
    form_token = new_token()
    ended = request.query_params.get("ended") == "1"
    return pages.page(
        request,
        "sign_in.html",
        status=status,
        title="Sign in",
        csrf_token=form_token,
        error=error,
        notice="Your session has ended; sign in again." if ended and error is None else None,
        cookies=[cookie(request, SIGN_IN_CSRF_COOKIE, form_token, _SIGN_IN_FORM_TTL_S)],
    )


@get("/sign-in")
async def sign_in_form(request: Request[Any, Any, Any]) -> Response[str]:
    """The form to paste a key into (`?ended=1`: say why the last session ended)."""
    return _sign_in_page(request)


@post("/sign-in")
async def sign_in(request: Request[Any, Any, Any], services: NamedDependency[Services]) -> Response[Any]:
    """Exchange a key for a session. The key itself is never stored: only its hash, to re-check it."""
    form = await request.form()
    if not same_token(form.get("csrf_token"), request.cookies.get(SIGN_IN_CSRF_COOKIE, "")):
        return _sign_in_page(request, status=403, error="The form expired or came from elsewhere; try again.")
    key = str(form.get("key") or "").strip()
    try:
        principal = await services.auth.authenticate(key, client=request.client.host if request.client else None)
    except Unauthenticated:
        return _sign_in_page(request, status=401, error="That key is unknown, expired or revoked.")
    except RateLimited as exc:
        page = _sign_in_page(request, status=429, error=exc.detail)
        page.headers.update(exc.headers)
        return page
    token = await start_session(services, principal, tokens.hash_key(key))
    return pages.see_other(
        "/dashboard",
        cookies=[
            cookie(request, SESSION_COOKIE, token, services.settings.dashboard_session_ttl_s),
            expired_cookie(request, SIGN_IN_CSRF_COOKIE),
        ],
    )


@post("/sign-out")
async def sign_out(
    request: Request[Any, Any, Any], services: NamedDependency[Services], session: NamedDependency[DashboardSession]
) -> Response[Any]:
    """End this session (other sessions of the same key stay)."""
    await checked_form(request, session)
    await end_session(services, session)
    return pages.see_other("/dashboard/sign-in", cookies=[expired_cookie(request, SESSION_COOKIE)])


@get("/static/dashboard.css", media_type="text/css")
async def stylesheet() -> Response[bytes]:
    """The one stylesheet (no script anywhere: every page works without JavaScript)."""
    css = resources.files("gateway.dashboard").joinpath("static/dashboard.css").read_bytes()
    return Response(css, media_type="text/css", headers={"Cache-Control": "public, max-age=300"})


routes = [landing, sign_in_form, sign_in, sign_out, stylesheet]
