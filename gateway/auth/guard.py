"""The app-wide guard: authenticate, check the route's scope, apply the key's rate limit.

Routes declare what they need in `opt`: `scope="generate"` (tenant key with that scope),
`operator=True` (operator key), or `exclude_from_auth=True` (public).
"""

from __future__ import annotations

import math
from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.handlers.base import BaseRouteHandler

from gateway.auth.keys import Principal, presented_key
from gateway.errors import PermissionDenied, RateLimited
from gateway.observability.context import annotate
from gateway.state import Services


async def authorize(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """Litestar guard run before every handler."""
    opt = handler.opt
    if opt.get("exclude_from_auth"):
        return
    services: Services = connection.app.state.services
    client = connection.client.host if connection.client is not None else None
    principal = await services.auth.authenticate(presented_key(connection.headers), client=client)
    if principal.tenant_id is not None:  # the request's log lines name the tenant from here on
        annotate(tenant_id=str(principal.tenant_id))
    if opt.get("operator"):
        if principal.kind != "operator":
            raise PermissionDenied("This endpoint needs an operator key.")
    else:
        if principal.kind != "tenant":
            raise PermissionDenied("Operator keys administer tenants; use a tenant key here.")
        scope = opt.get("scope")
        if scope is not None and scope not in principal.scopes:
            raise PermissionDenied(f"The key lacks the scope {scope!r}.", required_scope=scope)
    allowed, wait, remaining = await services.auth.rate_check(principal)
    limit = principal.rate_limit_per_minute
    headers = {
        "RateLimit-Limit": str(limit),
        "RateLimit-Remaining": str(remaining),
        "RateLimit-Reset": str(math.ceil(wait) if not allowed else 0),
    }
    if not allowed:
        headers["Retry-After"] = str(max(1, math.ceil(wait)))
        raise RateLimited(f"Rate limit of {limit} requests per minute exceeded.", headers=headers)
    connection.state.principal = principal
    connection.state.rate_headers = headers


def current_principal(request: Request[Any, Any, Any], services: NamedDependency[Services]) -> Principal:
    """Dependency: the principal the guard resolved.

    It takes `services` only to be resolved after it. Litestar resolves the dependencies of one level
    of the graph concurrently, in an anyio task group: two tasks per request for two plain attribute
    reads, about 2 % of a sync generation's CPU in the profile. One per level resolves inline."""
    principal: Principal = request.state.principal
    return principal
