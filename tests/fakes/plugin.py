"""pytest fixtures for the fake vendors. List "tests.fakes.plugin" in the root conftest's
`pytest_plugins`, or import the fixtures into a conftest.

Each fake starts once per session on its own ephemeral port; the per-test fixtures hand it out
with faults cleared and fail the test if any request broke the vendor's OpenAPI document.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

import pytest

from tests.fakes.aithriving import FakeAithriving
from tests.fakes.api2convert import FakeApi2Convert
from tests.fakes.base import FakeVendor
from tests.fakes.qolaba import FakeQolaba

F = TypeVar("F", bound=FakeVendor)


def _serve(fake: F) -> Iterator[F]:
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


def _fresh(fake: F) -> Iterator[F]:
    fake.reset()
    yield fake
    violations = list(fake.violations)
    fake.reset()
    if violations:
        pytest.fail(f"requests to the fake {fake.vendor} broke its OpenAPI document: {violations}")


@pytest.fixture(scope="session")
def api2convert_server() -> Iterator[FakeApi2Convert]:
    """The session's fake api2convert server."""
    yield from _serve(FakeApi2Convert())


@pytest.fixture(scope="session")
def qolaba_server() -> Iterator[FakeQolaba]:
    """The session's fake Qolaba server."""
    yield from _serve(FakeQolaba())


@pytest.fixture(scope="session")
def aithriving_server() -> Iterator[FakeAithriving]:
    """The session's fake aithriving server."""
    yield from _serve(FakeAithriving())


@pytest.fixture
def fake_api2convert(api2convert_server: FakeApi2Convert) -> Iterator[FakeApi2Convert]:
    """The fake api2convert, faults cleared; `.base_url`, `.api_key`, `.calls`, fault switches."""
    yield from _fresh(api2convert_server)


@pytest.fixture
def fake_qolaba(qolaba_server: FakeQolaba) -> Iterator[FakeQolaba]:
    """The fake Qolaba, faults cleared."""
    yield from _fresh(qolaba_server)


@pytest.fixture
def fake_aithriving(aithriving_server: FakeAithriving) -> Iterator[FakeAithriving]:
    """The fake aithriving, faults cleared."""
    yield from _fresh(aithriving_server)
