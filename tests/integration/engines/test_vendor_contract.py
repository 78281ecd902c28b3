"""Every vendor engine, against its fake, passes the generic engine contract."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from gateway.config import EngineKind
from gateway.engines.registry import build_client, build_engine
from tests.fakes.aithriving import FakeAithriving
from tests.fakes.api2convert import FakeApi2Convert
from tests.fakes.qolaba import FakeQolaba
from tests.fakes.samples import engine_config, sample_request
from tests.integration.engines.contract import CHECKS, Subject

# (kind, operation under test, the fake's fixture name)
VENDORS: list[tuple[EngineKind, str, str]] = [
    ("api2convert", "text-to-image", "fake_api2convert"),
    ("api2convert", "inpaint", "fake_api2convert"),
    ("qolaba", "text-to-image", "fake_qolaba"),
    ("qolaba", "image-to-image", "fake_qolaba"),
    ("qolaba", "inpaint", "fake_qolaba"),
    ("aithriving", "image-to-image", "fake_aithriving"),
]


@pytest.fixture(params=VENDORS, ids=[f"{kind}-{op}" for kind, op, _ in VENDORS])
async def subject(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    kind, operation, fixture = request.param
    fake = request.getfixturevalue(fixture)
    assert isinstance(fake, FakeApi2Convert | FakeQolaba | FakeAithriving)
    config = engine_config(kind, fake.base_url, fake.api_key)
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
