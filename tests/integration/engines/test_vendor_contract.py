"""Every vendor engine, against its fake, passes the generic engine contract."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from gateway.config import EngineKind
from gateway.domain.generation import Operation
from gateway.engines.registry import build_client, build_engine
from tests.fakes.aithriving import FakeAithriving
from tests.fakes.api2convert import FakeApi2Convert
from tests.fakes.base import FakeVendor
from tests.fakes.qolaba import FakeQolaba
from tests.fakes.samples import engine_config, sample_request
from tests.integration.engines.contract import CHECKS, READING_CHECKS, Subject

# (kind, operation under test, the fake's fixture name)
VENDORS: list[tuple[EngineKind, Operation, str]] = [
    ("api2convert", "text-to-image", "fake_api2convert"),
    ("api2convert", "inpaint", "fake_api2convert"),
    ("qolaba", "text-to-image", "fake_qolaba"),
    ("qolaba", "image-to-image", "fake_qolaba"),
    ("qolaba", "inpaint", "fake_qolaba"),
    ("aithriving", "image-to-image", "fake_aithriving"),
]


FAKES: dict[str, type[FakeVendor]] = {
    "fake_api2convert": FakeApi2Convert,
    "fake_qolaba": FakeQolaba,
    "fake_aithriving": FakeAithriving,
}
# Each vendor case again under each other reading of its pages, and under all of them at once.
READINGS: list[tuple[EngineKind, Operation, str, tuple[str, ...]]] = [
    (kind, operation, fixture, readings)
    for kind, operation, fixture in VENDORS
    for readings in [*((r,) for r in FAKES[fixture].READINGS), FAKES[fixture].READINGS]
]


# The engine option that follows each reading the default cannot serve at the same time.
SWITCHES: dict[tuple[EngineKind, str], dict[str, str]] = {("qolaba", "file_url_field"): {"image_field": "file_url"}}


@pytest.fixture(params=VENDORS, ids=[f"{kind}-{op}" for kind, op, _ in VENDORS])
async def subject(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    kind, operation, fixture = request.param
    async for built in _subject(request, kind, operation, fixture, ()):
        yield built


@pytest.fixture(
    params=READINGS, ids=[f"{kind}-{op}-{'+'.join(r) if len(r) == 1 else 'all'}" for kind, op, _, r in READINGS]
)
async def subject_read_otherwise(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    kind, operation, fixture, readings = request.param
    async for built in _subject(request, kind, operation, fixture, readings):
        yield built


async def _subject(
    request: pytest.FixtureRequest, kind: EngineKind, operation: Operation, fixture: str, readings: tuple[str, ...]
) -> AsyncIterator[Subject]:
    fake = request.getfixturevalue(fixture)
    assert isinstance(fake, FakeApi2Convert | FakeQolaba | FakeAithriving)
    fake.read_as(*readings)
    # Readings the adapter cannot serve at once are served by switching the engine's option.
    options = {k: v for r in readings for k, v in SWITCHES.get((kind, r), {}).items()}
    config = engine_config(kind, fake.base_url, fake.api_key, options=options)
    engine = build_engine(f"{kind}-test", config, build_client(config))
    # api2convert is sent base64 inputs here (the URL path is tested on its own); the
    # URL-only vendors get URLs.
    urls = kind != "api2convert"
    yield Subject(
        engine=engine,
        control=fake,
        make_request=lambda op, n: sample_request(op, n, urls=urls),
        operation=operation,
        synchronous=kind == "aithriving",
    )
    await engine.aclose()


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__.removeprefix("check_") for c in CHECKS])
async def test_engine_contract(subject: Subject, check: Callable[[Subject], Awaitable[None]]) -> None:
    await check(subject)


@pytest.mark.parametrize("check", READING_CHECKS, ids=[c.__name__.removeprefix("check_") for c in READING_CHECKS])
async def test_engine_contract_under_the_other_reading_of_the_vendor_pages(
    subject_read_otherwise: Subject, check: Callable[[Subject], Awaitable[None]]
) -> None:
    await check(subject_read_otherwise)
