"""Keyset cursors of the newest-first listings: opaque (created_at, id) pairs, or a serial id."""

from __future__ import annotations

import base64
from datetime import datetime
from uuid import UUID

from gateway.errors import ValidationFailed


def encode_cursor(created_at: datetime, row_id: UUID) -> str:
    """The cursor that continues a listing after the row (created_at, row_id)."""
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{row_id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    """The (created_at, id) a cursor from `encode_cursor` stands for; 422 on anything else."""
    try:
        stamp, _, ident = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        return datetime.fromisoformat(stamp), UUID(ident)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationFailed.field("cursor", "not a cursor this API returned") from exc


INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


def decode_id_cursor(cursor: str, largest: int) -> int:
    """The serial id a listing's `next_cursor` named (the ledger's, a price version's); 422 on
    anything else, including a number the id's column cannot hold."""
    try:
        value = int(cursor)
    except ValueError as exc:
        raise ValidationFailed.field("cursor", "not a cursor this API returned") from exc
    if not 0 < value <= largest:
        raise ValidationFailed.field("cursor", "not a cursor this API returned")
    return value
