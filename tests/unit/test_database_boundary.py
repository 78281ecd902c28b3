"""Only gateway/db imports asyncpg: every other module takes the driver's types and exceptions from
gateway/db/types.py and its queries from gateway/db, so the driver and the SQL stay in one place."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "gateway"
DATABASE = PACKAGE / "db"


def _imports_asyncpg(source: str) -> list[int]:
    """The lines of `source` that import asyncpg or a module of it (under TYPE_CHECKING too)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        if any(name == "asyncpg" or name.startswith("asyncpg.") for name in names):
            lines.append(node.lineno)
    return sorted(lines)


def _importers() -> dict[str, list[int]]:
    """Each module outside gateway/db that imports asyncpg, with the lines that do."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.is_relative_to(DATABASE):
            continue
        lines = _imports_asyncpg(path.read_text(encoding="utf-8"))
        if lines:
            found[path.relative_to(REPO).as_posix()] = lines
    return found


def test_no_module_outside_gateway_db_imports_asyncpg() -> None:
    importers = _importers()

    assert importers == {}


def test_the_check_sees_every_form_of_import() -> None:
    source = """
import asyncpg
import json, asyncpg.pool
from asyncpg import Record
from asyncpg.exceptions import PostgresError
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    import asyncpg as pg
from gateway.db.types import Row
from . import asyncpg_helpers
import asyncpgx
"""
    assert _imports_asyncpg(source) == [2, 3, 4, 5, 8]
