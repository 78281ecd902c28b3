"""Fixtures of the contract tests."""

from tests.e2e.live import live_gateway, make_live_gateway

__all__ = ["live_gateway", "make_live_gateway"]
