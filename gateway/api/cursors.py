"""Keyset cursors of the newest-first listings: one opaque format, one decoder.

A cursor is the key of the last row of a page (a `CursorKey`: (created_at, id) for jobs and
tenants, a serial id for the ledger and price versions), as a JSON array in unpadded
base64url. Decoding checks the key against its type, including that a number fits the id's
column: a forged cursor answers 422 naming `cursor`, never a database error.

Cursors of the formats before this one still decode, so a client paging across a deploy goes
on: base64 of "created_at|id", and a serial id as bare digits.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated, Any, TypeVar
from uuid import UUID

import msgspec

from gateway.errors import ValidationFailed

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


class CursorKey(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """The sort key a listing continues after."""


class CreatedAtKey(CursorKey, frozen=True):
    """A listing ordered by (created_at, id): jobs, tenants."""

    # Rows' timestamps are timestamptz: a cursor without a zone is not one of ours.
    created_at: Annotated[datetime, msgspec.Meta(tz=True)]
    id: UUID

    def pair(self) -> tuple[datetime, UUID]:
        return self.created_at, self.id


class SerialKey(CursorKey, frozen=True):
    """A listing ordered by an `integer` (serial) id: price versions."""

    id: Annotated[int, msgspec.Meta(gt=0, le=INT32_MAX)]


class BigSerialKey(CursorKey, frozen=True):
    """A listing ordered by a `bigint` (bigserial) id: the ledger."""

    id: Annotated[int, msgspec.Meta(gt=0, le=INT64_MAX)]


K = TypeVar("K", bound=CursorKey)


def encode_cursor(key: CursorKey) -> str:
    """The cursor that continues a listing after the row whose sort key is `key`."""
    return base64.urlsafe_b64encode(msgspec.json.encode(key)).rstrip(b"=").decode()


def decode_cursor(cursor: str, key: type[K]) -> K:
    """The `key` a cursor from `encode_cursor` stands for; 422 naming `cursor` on anything else."""
    try:
        if cursor.isascii() and cursor.isdecimal():  # the bare serial ids of the old format
            return msgspec.convert([cursor], key, strict=False)
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        if text.startswith(b"["):
            return msgspec.json.decode(text, type=key)
        parts: list[Any] = text.decode().split("|")  # the old "created_at|id"
        return msgspec.convert(parts, key, strict=False)
    except (ValueError, msgspec.DecodeError) as exc:
        raise ValidationFailed.field("cursor", "not a cursor this API returned") from exc
