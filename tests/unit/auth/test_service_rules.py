"""The pure rules of key issuance: scopes, names, grantability, request translation, token format."""

from __future__ import annotations

import pytest

from gateway.api.keys import KeyCreate, key_spec
from gateway.auth import service, tokens
from gateway.auth.keys import SCOPES
from gateway.errors import PermissionDenied, ValidationFailed


def test_scopes_are_deduplicated_into_canonical_order() -> None:
    assert service.normalize_scopes(["keys:manage", "generate", "generate"]) == ["generate", "keys:manage"]


def test_unknown_scope_is_named_in_the_error() -> None:
    with pytest.raises(ValidationFailed) as info:
        service.normalize_scopes(["generate", "admin"])
    assert "admin" in str(info.value.detail)


def test_empty_scopes_are_refused() -> None:
    with pytest.raises(ValidationFailed):
        service.normalize_scopes([])


def test_subset_of_own_scopes_is_grantable() -> None:
    service.check_grantable(["generate"], SCOPES)
    service.check_grantable([], ["generate"])


def test_scope_the_creator_lacks_is_not_grantable() -> None:
    with pytest.raises(PermissionDenied) as info:
        service.check_grantable(["generate", "usage:read", "files:read"], ["generate"])
    assert info.value.extra["missing_scopes"] == ["files:read", "usage:read"]


@pytest.mark.parametrize("name", ["", "   ", "x" * 201])
def test_blank_or_overlong_names_are_refused(name: str) -> None:
    with pytest.raises(ValidationFailed):
        service.check_name(name)


def test_name_is_trimmed() -> None:
    assert service.check_name("  ci  ") == "ci"


def test_key_request_caps_become_millicredits() -> None:
    spec = key_spec(KeyCreate(name="ci", scopes=["generate"], monthly_cap=12.345))
    assert spec.monthly_cap == 12_345
    assert spec.rate_limit_per_minute == service.DEFAULT_RATE_LIMIT_PER_MINUTE


def test_key_request_cap_with_more_than_three_decimals_is_refused() -> None:
    with pytest.raises(ValidationFailed) as info:
        key_spec(KeyCreate(name="ci", scopes=["generate"], monthly_cap=0.0005))
    assert info.value.errors is not None
    assert info.value.errors[0].field == "monthly_cap"


@pytest.mark.parametrize("kind", ["tenant", "operator"])
def test_new_keys_parse_as_their_kind_and_a_typo_does_not(kind: tokens.KeyKind) -> None:
    key = tokens.new_key(kind)
    assert tokens.parse_kind(key) == kind
    typo = key[:10] + ("a" if key[10] != "a" else "b") + key[11:]
    assert tokens.parse_kind(typo) is None
    assert tokens.hint(key) == key[-4:]
    assert len(tokens.hash_key(key)) == 32
