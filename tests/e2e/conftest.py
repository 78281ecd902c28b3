"""Fixtures shared by the end-to-end tests."""

from tests.e2e.live import live_gateway, make_live_gateway

__all__ = ["live_gateway", "make_live_gateway"]
