"""Fixtures of the engine integration tests: the fake vendors and engines built against them."""

from tests.fakes.plugin import (  # noqa: F401  (fixtures are found by name)
    aithriving_server,
    api2convert_server,
    fake_aithriving,
    fake_api2convert,
    fake_qolaba,
    qolaba_server,
)
