"""Standard Webhooks signatures (https://www.standardwebhooks.com/).

A tenant's secret is `whsec_` + base64 of random bytes. Each delivery carries `webhook-id`,
`webhook-timestamp` (Unix seconds) and `webhook-signature`: `v1,` + base64 of the HMAC-SHA256,
keyed with the secret's bytes, of `{webhook-id}.{webhook-timestamp}.{body}`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

PREFIX = "whsec_"


def new_secret() -> str:
    """A fresh signing secret: 32 random bytes in standard base64, as the official libraries decode it."""
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_` secret.

    Accepts URL-safe base64 too: tenants created before secrets were generated in standard
    base64 hold such secrets; `display_secret` shows them in the standard form of the same key."""
    body = secret.removeprefix(PREFIX).strip()
    padded = body + "=" * (-len(body) % 4)
    try:
        if "-" in body or "_" in body:
            key = base64.urlsafe_b64decode(padded)
        else:
            key = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("a webhook secret is whsec_ followed by base64") from exc
    if not key:
        raise ValueError("empty webhook secret")
    return key


def display_secret(secret: str) -> str:
    """The secret as tenants should use it: `whsec_` + standard, padded base64 of the key."""
    return PREFIX + base64.b64encode(secret_key(secret)).decode()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value for one delivery."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, message_id: str, timestamp: int, body: bytes, signature_header: str) -> bool:
    """Whether any `v1` signature in the header matches (constant-time); the receiver's side."""
    expected = sign(secret, message_id, timestamp, body).encode()
    return any(
        hmac.compare_digest(expected, candidate.encode())
        for candidate in signature_header.split(" ")
        if candidate.startswith("v1,")
    )
