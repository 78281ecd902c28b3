"""The rules a webhook URL follows: the same SSRF rules as input image URLs.

Checked when a request or the tenant's settings name the URL (422 naming the field) and again
before every delivery, since what a name resolves to can change in between.
"""

from __future__ import annotations

from gateway.storage.inputs import CheckedURL, check_public_url


async def check_webhook_url(url: str, field: str, allow_hosts: frozenset[str]) -> CheckedURL:
    """Refuse (ValidationFailed naming `field`) a URL that is not https or reaches a non-public address;
    return it with the address a delivery connects to."""
    return await check_public_url(url, field, allow_hosts, what="webhook URLs")
