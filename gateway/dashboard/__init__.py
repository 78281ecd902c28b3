"""The usage and billing dashboard under /dashboard: server-rendered HTML, no script.

Signed in by a session (see `sessions`), never by an API key header, so the app's key guard lets
these routes through and `current_session` guards them instead.
"""

from __future__ import annotations

from litestar import Router
from litestar.datastructures import ResponseHeader
from litestar.di import Provide
from litestar.exceptions import HTTPException

from gateway.dashboard import operator, signin, tenant
from gateway.dashboard.pages import error_page, template_config, to_sign_in
from gateway.dashboard.sessions import SignInRequired, current_session
from gateway.errors import GatewayError

__all__ = ["router", "template_config"]

# Nothing but our own stylesheet and images; no script at all; forms post only to us; never framed.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def router() -> Router:
    """The /dashboard routes, built per app."""
    return Router(
        path="/dashboard",
        route_handlers=[*signin.routes, *tenant.routes, *operator.routes],
        opt={"exclude_from_auth": True},
        include_in_schema=False,
        dependencies={"session": Provide(current_session)},
        exception_handlers={SignInRequired: to_sign_in, GatewayError: error_page, HTTPException: error_page},
        response_headers=[
            ResponseHeader(name="Content-Security-Policy", value=CONTENT_SECURITY_POLICY),
            ResponseHeader(name="X-Content-Type-Options", value="nosniff"),
            ResponseHeader(name="Referrer-Policy", value="same-origin"),
            ResponseHeader(name="X-Frame-Options", value="DENY"),
        ],
    )
