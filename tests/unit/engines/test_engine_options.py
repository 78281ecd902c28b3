"""`engine_options.<kind>` accepts what the vendor's document accepts, and nothing it does not know.

The validators in each engine module are checked against openapi/vendors/<kind>.yaml, so a
vendor document edit that the validators miss (or the reverse) fails here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from types import ModuleType
from typing import Any

import pytest

from gateway.engines import aithriving, api2convert, qolaba
from tests.fakes.spec import VendorSpec

MODULES = {"api2convert": api2convert, "qolaba": qolaba, "aithriving": aithriving}


def _properties(node: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every (name, schema) property declared anywhere in a document node."""
    if isinstance(node, dict):
        for name, schema in node.get("properties", {}).items():
            if isinstance(schema, dict):
                yield name, schema
        for value in node.values():
            yield from _properties(value)
    elif isinstance(node, list):
        for value in node:
            yield from _properties(value)


def documented(kind: str) -> dict[str, list[dict[str, Any]]]:
    """Request properties of the vendor's document by name, `$ref`s resolved."""
    spec = VendorSpec(kind)
    found: dict[str, list[dict[str, Any]]] = {}
    for name, schema in _properties(spec.document["components"]["schemas"]):
        found.setdefault(name, []).append(spec.resolve(schema))
    return found


def options_of(module: ModuleType) -> Mapping[str, Callable[[Any], str | None]]:
    options: Mapping[str, Callable[[Any], str | None]] = module.OPTIONS
    return options


@pytest.mark.parametrize("kind", sorted(MODULES))
def test_every_engine_option_is_a_documented_vendor_field(kind: str) -> None:
    fields = documented(kind)
    assert set(options_of(MODULES[kind])) <= set(fields)


@pytest.mark.parametrize("kind", sorted(MODULES))
def test_enumerated_options_accept_exactly_the_documented_values(kind: str) -> None:
    module = MODULES[kind]
    fields = documented(kind)
    checked = 0
    for name in options_of(module):
        enums = [schema["enum"] for schema in fields[name] if "enum" in schema]
        if not enums:
            continue
        for value in {v for enum in enums for v in enum}:
            assert module.check_options({name: value}) is None, (name, value)
        if len(enums) == len(fields[name]):  # enumerated everywhere: anything else is refused
            problem = module.check_options({name: "not-a-documented-value"})
            assert problem is not None
            assert problem.startswith(f"engine_options.{kind}.{name} ")
        checked += 1
    assert checked  # each vendor has at least one enumerated option


@pytest.mark.parametrize("kind", sorted(MODULES))
def test_unknown_options_are_refused_naming_the_known_ones(kind: str) -> None:
    problem = MODULES[kind].check_options({"colour": "red"})
    assert problem is not None
    assert problem.startswith(f"engine_options.{kind}.colour is not a {kind} option (known: ")
