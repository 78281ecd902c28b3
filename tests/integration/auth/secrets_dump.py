"""A pg_dump-like scan: every textual or binary value in every table, to prove no secret is stored."""

from __future__ import annotations

from typing import Any

# Everything a plaintext key could hide in: text of any kind, bytes, arrays and documents.
_TYPES = ("text", "character varying", "character", "bytea", "ARRAY", "jsonb", "json")


async def dump_values(conn: Any) -> list[bytes]:
    """Each such column value of each table in the public schema, as bytes; plus each whole row as
    text, which also covers types this list misses."""
    columns = await conn.fetch(
        """SELECT table_name, column_name, data_type FROM information_schema.columns
           WHERE table_schema = 'public' AND data_type = ANY($1::text[])
           ORDER BY table_name, ordinal_position""",
        list(_TYPES),
    )
    values: list[bytes] = []
    for col in columns:
        table, column = col["table_name"], col["column_name"]
        # Identifiers come from the catalog, quoted: nothing user-supplied reaches this SQL.
        cast = "" if col["data_type"] == "bytea" else "::text"
        rows = await conn.fetch(f'SELECT "{column}"{cast} AS v FROM "{table}" WHERE "{column}" IS NOT NULL')
        for row in rows:
            value = row["v"]
            values.append(value if isinstance(value, bytes) else value.encode())
    tables = await conn.fetch("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
    for table in tables:
        for row in await conn.fetch(f'SELECT t::text AS v FROM "{table["table_name"]}" t'):
            values.append(row["v"].encode())
    return values


def assert_no_secret(values: list[bytes], secrets: list[str]) -> None:
    """No secret, nor its random part without the prefix, appears in any value."""
    assert values, "the scan found nothing at all; it is not looking where the data is"
    for secret in secrets:
        needles = [secret.encode(), secret.split("_", 1)[1].encode()]
        for value in values:
            for needle in needles:
                assert needle not in value, "a plaintext key is stored in the database"
