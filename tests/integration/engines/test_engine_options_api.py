"""`engine_options.<kind>` through the gateway: validated at submission, pinning to that kind."""

from __future__ import annotations

from tests.conftest import Gateway
from tests.e2e.test_generation_billing import T2I, auth


async def test_options_for_a_kind_pin_the_request_to_engines_of_that_kind(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    body = {**T2I, "engine_options": {"qolaba": {"inference_type": "a100"}}}
    response = await gateway.client.post("/v1/text-to-image", json=body, headers=auth(key))
    assert response.status_code == 200, response.text
    job = response.json()
    # a2c comes first in the route, but the options mean nothing to it: it is not even tried.
    assert job["engine"] == "qolaba"
    assert [a["engine"] for a in job["attempts"]] == ["qolaba"]
    assert not gateway.extra["a2c"].calls
    (submitted,) = [c.body for c in gateway.extra["qolaba"].calls if c.path == "/getTextToImage"]
    assert submitted["inference_type"] == "a100"


async def test_pinned_request_does_not_fall_back_to_other_kinds(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    gateway.extra["qolaba"].fail_with_status(500)
    body = {**T2I, "engine_options": {"qolaba": {"inference_type": "a100"}}}
    response = await gateway.client.post("/v1/text-to-image", json=body, headers=auth(key))
    assert response.status_code == 503
    assert {a["engine"] for a in response.json()["job"]["attempts"]} == {"qolaba"}
    assert not gateway.extra["a2c"].calls


async def test_options_outside_the_vendor_document_are_422_before_any_charge(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    for options, reason in (
        ({"qolaba": {"inference_type": "tpu"}}, "engine_options.qolaba.inference_type must be one of a100, a10g, h100"),
        ({"qolaba": {"colour": "red"}}, "engine_options.qolaba.colour is not a qolaba option"),
        # aithriving does not serve text-to-image: its options pin the request to no engine at all.
        ({"aithriving": {"clip_guidance_preset": "FAST_BLUE"}}, "engine_options name only aithriving engines"),
    ):
        body = {**T2I, "engine_options": options}
        response = await gateway.client.post("/v1/text-to-image", json=body, headers=auth(key))
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert reason in response.text
    balance = (await gateway.client.get("/v1/balance", headers=auth(key))).json()
    assert (balance["balance"], balance["held"]) == (10.0, 0.0)
    async with gateway.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM jobs") == 0
