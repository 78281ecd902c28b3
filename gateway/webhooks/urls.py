"""The rules a webhook URL follows: the same SSRF rules as input image URLs.

Checked when a request or the tenant's settings name the URL (422 naming the field) and again
before every delivery, since what a name resolves to can change in between.
"""

from __future__ import annotations

import asyncio
import socket
from urllib.parse import urlsplit

from gateway.errors import ValidationFailed
from gateway.storage.inputs import is_public_address


async def check_webhook_url(url: str, field: str, allow_hosts: frozenset[str]) -> None:
    """Refuse (ValidationFailed naming `field`) a URL that is not https or reaches a non-public address.

    Hosts in `allow_hosts` (config `fetch_allow_hosts`, e.g. 127.0.0.1 in tests) skip both rules."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValidationFailed.field(field, "not a valid URL") from exc
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValidationFailed.field(field, "must be an https URL")
    host = parts.hostname
    if host in allow_hosts:
        return
    if parts.scheme != "https":
        raise ValidationFailed.field(field, "webhook URLs must use https")
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port or 443, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ValidationFailed.field(field, f"cannot resolve {host}") from exc
    for info in infos:
        if not is_public_address(str(info[4][0])):
            raise ValidationFailed.field(field, f"{host} resolves to a non-public address; refused")
