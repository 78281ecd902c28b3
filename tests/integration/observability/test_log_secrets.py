"""A whole request flow logged as JSON, then searched for every secret it used: none may appear."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable

from tests.conftest import Gateway
from tests.integration.observability.logs import captured_logs
from tests.integration.observability.test_request_ids import Hooks, hooks
from tests.spans import recording_spans
from tests.waiting import eventually

__all__ = ["hooks"]  # the fixture, shared


async def test_no_key_password_webhook_secret_or_prompt_reaches_the_logs(
    make_gateway: Callable[..., Awaitable[Gateway]], hooks: Hooks
) -> None:
    gw = await make_gateway(
        routes={"text-to-image": ["a2c"], "image-to-image": ["ait"], "inpaint": ["a2c"]},
        webhooks={"poll_s": 0.2, "timeout_s": 2.0, "backoff_base_s": 0.1},
    )
    _, key = await gw.tenant()
    auth = {"Authorization": f"Bearer {key}"}
    password = "pw-" + secrets.token_urlsafe(24)
    prompt = " ".join(secrets.token_hex(8) for _ in range(200))  # a prompt-sized payload, 3,400 characters
    with captured_logs() as logs, recording_spans():
        rotated = await gw.client.post("/v1/webhook/rotate-secret", headers=auth)
        assert rotated.status_code == 200, rotated.text
        webhook_secret = (await gw.client.get("/v1/webhook", headers=auth)).json()["secret"]
        assert (await gw.client.put("/v1/webhook", json={"url": hooks.url}, headers=auth)).status_code == 200
        gw.extra["a2c"].fail_with_status(500, times=1)  # a failed attempt is logged
        body = {"prompt": prompt, "width": 512, "height": 512, "steps": 20, "download_password": password}
        made = await gw.client.post("/v1/text-to-image", json=body, headers=auth)
        assert made.status_code == 200, made.text
        file_url = made.json()["results"][0]["url"]
        assert (await gw.client.get(file_url, headers={"X-Download-Password": "wrong"})).status_code in (401, 403)
        assert (await gw.client.get(file_url, headers={"X-Download-Password": password})).status_code == 200
        refused = await gw.client.post("/v1/text-to-image", json={**body, "width": 7}, headers=auth)
        assert refused.status_code == 422
        gw.extra["a2c"].fail_with_status(500)  # every attempt fails: a 503 problem, logged as such
        failed = await gw.client.post("/v1/text-to-image", json=body, headers=auth)
        assert failed.status_code == 503, failed.text
        forged = key[:-3] + ("AAA" if not key.endswith("AAA") else "BBB")
        assert (await gw.client.get("/v1/balance", headers={"Authorization": f"Bearer {forged}"})).status_code == 401
        await eventually(lambda: len(hooks.headers) >= 2, what="both jobs' webhooks delivered")
    lines = logs.lines()
    assert lines, "the flow logged something"
    assert any(line.get("engine") == "a2c" for line in lines)
    text = logs.text
    for name, secret in {
        "API key": key,
        "forged API key": forged,
        "API key's secret part": key[4:20],
        "download password": password,
        "webhook secret": webhook_secret,
        "webhook secret's key": webhook_secret.removeprefix("whsec_")[:16],
        "prompt": prompt[:40],
        "prompt's end": prompt[-40:],
    }.items():
        assert secret not in text, f"the {name} is in the logs"
