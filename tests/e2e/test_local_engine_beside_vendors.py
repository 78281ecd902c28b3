"""`kind = "diffusion"` without `base_url` is the in-process GPU service: one route can try a
vendor first and the local model second, with no `gateway gpu-worker`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.conftest import Gateway
from tests.e2e.test_generation_billing import audit_clean, auth, balance

SMALL = {"prompt": "a paper boat", "width": 64, "height": 64, "steps": 2}


# Loads torch and builds the demo model into the test's data folder (tens of seconds on 2 cores).
@pytest.mark.slow
async def test_a_vendor_failing_falls_back_to_the_in_process_model(
    make_gateway: Callable[..., Awaitable[Gateway]], fake_api2convert: Any
) -> None:
    engines = {
        "a2c": {
            "kind": "api2convert",
            "base_url": fake_api2convert.base_url,
            "api_key_env": "A2C_KEY",
            "timeout_s": 10,
        },
        "local": {"kind": "diffusion", "timeout_s": 120},
    }
    gw = await make_gateway(engines=engines, routes={"text-to-image": ["a2c", "local"]})
    _, key = await gw.tenant(credits=10)
    fake_api2convert.fail_with_status(500)
    response = await gw.client.post("/v1/text-to-image", json=SMALL, headers=auth(key))
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["engine"] == "local"
    assert [(a["engine"], a["outcome"]) for a in job["attempts"]] == [("a2c", "failed"), ("local", "succeeded")]
    health = await gw.client.get("/v1/admin/engines", headers=auth(gw.operator_key))
    assert health.status_code == 200, health.text
    assert "local" in health.text
    assert (await balance(gw, key))["balance"] == 10 - job["charged"]
    await audit_clean(gw)
