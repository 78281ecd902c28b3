"""The one cursor format of the newest-first listings (gateway/api/cursors.py)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from uuid import uuid4

import pytest

from gateway.api.cursors import (
    INT32_MAX,
    INT64_MAX,
    BigSerialKey,
    CreatedAtKey,
    CursorKey,
    SerialKey,
    decode_cursor,
    encode_cursor,
)
from gateway.errors import ValidationFailed

STAMP = datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC)
KEYS: list[CursorKey] = [CreatedAtKey(STAMP, uuid4()), SerialKey(INT32_MAX), BigSerialKey(INT64_MAX), SerialKey(1)]


@pytest.mark.parametrize("key", KEYS, ids=repr)
def test_a_cursor_decodes_to_the_key_it_was_made_from_and_is_url_safe(key: CursorKey) -> None:
    cursor = encode_cursor(key)
    assert decode_cursor(cursor, type(key)) == key
    assert cursor.replace("-", "").replace("_", "").isalnum()


def test_cursors_of_the_old_formats_still_decode() -> None:
    key = CreatedAtKey(STAMP, uuid4())
    old = base64.urlsafe_b64encode(f"{STAMP.isoformat()}|{key.id}".encode()).decode()
    assert decode_cursor(old, CreatedAtKey) == key
    assert decode_cursor("42", BigSerialKey) == BigSerialKey(42)
    assert decode_cursor(str(INT32_MAX), SerialKey) == SerialKey(INT32_MAX)


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("cursor", "key"),
    [
        ("nope", CreatedAtKey),
        ("bm90IGEgY3Vyc29y", CreatedAtKey),
        ("\u0661\u0662", SerialKey),  # Arabic-Indic digits: str.isdecimal, yet no id
        (_b64(f'["2026-01-02T03:04:05", "{uuid4()}"]'), CreatedAtKey),  # no time zone
        (_b64('["2026-01-02T03:04:05Z", "not-a-uuid"]'), CreatedAtKey),
        (_b64("[1, 2]"), SerialKey),
        (_b64("[true]"), SerialKey),
        (_b64("[1.5]"), BigSerialKey),
        (_b64("[1e400]"), BigSerialKey),
        # Ids beyond their column once answered 500 (asyncpg could not send them); now 422.
        ("0", SerialKey),
        ("-1", SerialKey),
        (str(INT32_MAX + 1), SerialKey),
        (encode_cursor(BigSerialKey(INT32_MAX + 1)), SerialKey),
        (str(INT64_MAX + 1), BigSerialKey),
        (_b64(f"[{INT64_MAX + 1}]"), BigSerialKey),
        ("9" * 5000, BigSerialKey),
        (encode_cursor(SerialKey(7)), CreatedAtKey),
        (encode_cursor(CreatedAtKey(STAMP, uuid4())), BigSerialKey),
    ],
)
def test_anything_else_is_refused_naming_the_cursor(cursor: str, key: type[CursorKey]) -> None:
    with pytest.raises(ValidationFailed) as refused:
        decode_cursor(cursor, key)
    assert refused.value.errors is not None
    assert [e.field for e in refused.value.errors] == ["cursor"]
