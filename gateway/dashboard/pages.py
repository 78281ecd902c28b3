"""Rendering: the Jinja2 environment (autoescaped, strict), page responses and error pages."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from litestar import Request, Response
from litestar.datastructures import Cookie
from litestar.exceptions import HTTPException
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect
from litestar.template.config import TemplateConfig

from gateway.dashboard.sessions import SignInRequired
from gateway.errors import GatewayError

log = logging.getLogger(__name__)

# Pages carry balances and, once, key secrets: no cache may keep them.
NO_STORE = {"Cache-Control": "no-store"}
RANGES = (7, 30, 90)


def credits(value: float) -> str:
    """Credits as people read them: thousands separated, always three decimals (exact millicredits)."""
    return f"{value:,.3f}"


def when(value: datetime | None) -> str:
    return "—" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    """Templates from gateway/dashboard/templates, autoescaped; a missing variable is an error, not ''."""
    env = Environment(
        loader=PackageLoader("gateway.dashboard", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["credits"] = credits
    env.filters["when"] = when
    return TemplateConfig(instance=JinjaTemplateEngine.from_environment(env))


def render(request: Request[Any, Any, Any], name: str, context: dict[str, Any]) -> str:
    engine = request.app.template_engine
    assert isinstance(engine, JinjaTemplateEngine), "create_app sets the dashboard's template_config"
    return engine.get_template(name).render(**context)


def page(
    request: Request[Any, Any, Any],
    name: str,
    *,
    status: int = 200,
    cookies: Sequence[Cookie] = (),
    **context: Any,
) -> Response[str]:
    """An HTML page. `session` (or None) and `error` are always defined for the base template."""
    context.setdefault("session", None)
    context.setdefault("error", None)
    context.setdefault("notice", None)
    return Response(
        render(request, name, context),
        status_code=status,
        media_type="text/html; charset=utf-8",
        headers=NO_STORE,
        cookies=list(cookies),
    )


def see_other(path: str, cookies: Sequence[Cookie] = ()) -> Response[Any]:
    """Post/redirect/get: 303, so a reload never submits a form twice."""
    return Redirect(path, status_code=303, cookies=list(cookies), headers=NO_STORE)


def day_range(days: int | None) -> tuple[int, date, date]:
    """One of the offered ranges (30 days unless told), ending today (UTC, the rollup's days)."""
    chosen = days if days in RANGES else 30
    end = datetime.now(UTC).date()
    return chosen, end - timedelta(days=chosen - 1), end


def to_sign_in(request: Request[Any, Any, Any], exc: SignInRequired) -> Response[Any]:
    """Exception handler: no live session. Pages go to the sign-in form; a form post is refused."""
    if request.method != "GET":
        return page(request, "error.html", status=401, title="Signed out", message=exc.reason or "Sign in first.")
    target = "/dashboard/sign-in" + ("?ended=1" if exc.reason else "")
    return see_other(target)


def error_page(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Exception handler: our errors and the framework's as an HTML page with the right status."""
    if isinstance(exc, GatewayError):
        status, title, message = exc.http_status, exc.title, exc.detail or exc.title
    elif isinstance(exc, HTTPException):
        status, title, message = exc.status_code, "Error", exc.detail
    else:
        log.exception("dashboard error", exc_info=exc)
        status, title, message = 500, "Internal error", "An unexpected error occurred; it has been logged."
    if status == 404:
        title, message = "Not found", "There is nothing here for this account."
    return page(request, "error.html", status=status, title=title, message=message)
