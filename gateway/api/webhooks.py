"""GET|PUT /v1/webhook: the tenant's default webhook URL and signing secret; secret rotation."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import get, post, put
from litestar.di import NamedDependency
from litestar.params import JSONBody

from gateway.auth.keys import Principal
from gateway.db import webhooks as wq
from gateway.domain.requests import WebhookUrl
from gateway.errors import NotFound
from gateway.state import Services
from gateway.webhooks.signing import display_secret, new_secret
from gateway.webhooks.urls import check_webhook_url


class WebhookSettings(msgspec.Struct, kw_only=True):
    url: Annotated[
        str | None,
        msgspec.Meta(description="Where job events go when a request names no webhook_url; null: nowhere."),
    ]
    secret: Annotated[
        str,
        msgspec.Meta(
            description="Standard Webhooks signing secret (whsec_ + base64). Verify webhook-signature with it."
        ),
    ]


class WebhookSettingsUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    url: WebhookUrl | None


async def _settings(services: Services, principal: Principal) -> WebhookSettings:
    assert principal.tenant_id is not None
    async with services.pool.acquire() as conn:
        row = await wq.tenant_webhook(conn, principal.tenant_id)
    if row is None:
        raise NotFound("No such tenant.")
    return WebhookSettings(url=row["webhook_url"], secret=display_secret(row["webhook_secret"]))


@get(
    "/v1/webhook",
    operation_id="getWebhook",
    summary="Get the webhook settings",
    tags=["webhooks"],
    opt={"scope": "keys:manage"},
)
async def get_webhook(services: NamedDependency[Services], principal: NamedDependency[Principal]) -> WebhookSettings:
    """The tenant's default webhook URL and the secret its deliveries are signed with."""
    return await _settings(services, principal)


@put(
    "/v1/webhook",
    operation_id="setWebhook",
    summary="Set the webhook URL",
    tags=["webhooks"],
    opt={
        "scope": "keys:manage",
        "problems": {422: "The URL is invalid, not https, or resolves to a non-public address."},
    },
)
async def set_webhook(
    *, services: NamedDependency[Services], principal: NamedDependency[Principal], data: JSONBody[WebhookSettingsUpdate]
) -> WebhookSettings:
    """Set (or, with null, clear) the default webhook URL. It must be https and reach a public address."""
    assert principal.tenant_id is not None
    if data.url is not None:
        await check_webhook_url(data.url, "url", frozenset(services.settings.fetch_allow_hosts))
    async with services.pool.acquire() as conn:
        await wq.set_tenant_webhook_url(conn, principal.tenant_id, data.url)
    return await _settings(services, principal)


@post(
    "/v1/webhook/rotate-secret",
    operation_id="rotateWebhookSecret",
    summary="Rotate the webhook signing secret",
    tags=["webhooks"],
    opt={"scope": "keys:manage"},
    status_code=200,
)
async def rotate_webhook_secret(
    services: NamedDependency[Services], principal: NamedDependency[Principal]
) -> WebhookSettings:
    """Replace the signing secret. Deliveries from now on, retries included, are signed with the new one."""
    assert principal.tenant_id is not None
    async with services.pool.acquire() as conn:
        await wq.set_tenant_webhook_secret(conn, principal.tenant_id, new_secret())
    return await _settings(services, principal)


routes = [get_webhook, set_webhook, rotate_webhook_secret]
