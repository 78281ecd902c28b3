"""The x-gateway-ambiguity notes of openapi/vendors/*.yaml: each gives both readings and what the
gateway does, and every mode of a fake vendor that follows the other reading has its note."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fakes.aithriving import FakeAithriving
from tests.fakes.api2convert import FakeApi2Convert
from tests.fakes.base import FakeVendor
from tests.fakes.qolaba import FakeQolaba
from tests.fakes.spec import VendorSpec

FAKES: dict[str, type[FakeVendor]] = {
    "api2convert": FakeApi2Convert,
    "qolaba": FakeQolaba,
    "aithriving": FakeAithriving,
}


def notes(vendor: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = VendorSpec(vendor).document["x-gateway-ambiguity"]
    return found


@pytest.mark.parametrize("vendor", sorted(FAKES))
def test_each_note_names_its_page_both_readings_and_what_the_gateway_does(vendor: str) -> None:
    for note in notes(vendor):
        assert set(note) <= {"page", "where", "readings", "gateway", "fake_reading"}, note
        assert isinstance(note["page"], str), note
        assert isinstance(note["where"], str), note
        assert len(note["readings"]) == 2, note
        assert all(isinstance(r, str) and r for r in note["readings"]), note
        assert isinstance(note["gateway"], str), note
        assert note["gateway"].strip(), note


@pytest.mark.parametrize("vendor", sorted(FAKES))
def test_every_fake_reading_is_a_documented_ambiguity_and_every_named_one_exists(vendor: str) -> None:
    named = {note["fake_reading"] for note in notes(vendor) if "fake_reading" in note}
    assert named == set(FAKES[vendor].READINGS)
