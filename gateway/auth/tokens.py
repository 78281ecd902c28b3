"""The API key format.

`igw_` (tenant key) or `igwop_` (operator key), then 30 base62 characters of randomness
(about 178 bits), then 6 base62 characters of CRC32 over everything before them, as GitHub
tokens do. The checksum lets us refuse a malformed or mistyped key without touching the
database, and lets secret scanners recognise leaked keys with few false positives.
Only SHA-256 of the whole key is stored: the secret is high-entropy, so a slow hash adds nothing.
"""

from __future__ import annotations

import hashlib
import secrets
import zlib
from typing import Literal

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_RANDOM_LEN = 30
_CHECK_LEN = 6

TENANT_PREFIX = "igw_"
OPERATOR_PREFIX = "igwop_"

KeyKind = Literal["tenant", "operator"]


def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, rem = divmod(number, 62)
        chars.append(_ALPHABET[rem])
    return "".join(reversed(chars))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), _CHECK_LEN)


def new_key(kind: KeyKind) -> str:
    """A fresh key of `kind`, to be shown once and then only stored as `hash_key(key)`."""
    prefix = TENANT_PREFIX if kind == "tenant" else OPERATOR_PREFIX
    body = prefix + "".join(secrets.choice(_ALPHABET) for _ in range(_RANDOM_LEN))
    return body + _checksum(body)


def parse_kind(key: str) -> KeyKind | None:
    """The kind of a well-formed key, or None when the key is malformed (wrong prefix, length,
    alphabet or checksum). Needs no database."""
    if key.startswith(OPERATOR_PREFIX):
        kind: KeyKind = "operator"
        prefix = OPERATOR_PREFIX
    elif key.startswith(TENANT_PREFIX):
        kind = "tenant"
        prefix = TENANT_PREFIX
    else:
        return None
    rest = key[len(prefix) :]
    if len(rest) != _RANDOM_LEN + _CHECK_LEN or any(c not in _ALPHABET for c in rest):
        return None
    body, check = key[:-_CHECK_LEN], key[-_CHECK_LEN:]
    if not secrets.compare_digest(_checksum(body), check):
        return None
    return kind


def hash_key(key: str) -> bytes:
    """What the database stores and looks keys up by."""
    return hashlib.sha256(key.encode()).digest()


def hint(key: str) -> str:
    """The last four characters, enough to tell keys apart in a listing."""
    return key[-4:]
