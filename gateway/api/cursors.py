"""Opaque keyset cursors over (created_at, id), shared by every newest-first listing."""

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
