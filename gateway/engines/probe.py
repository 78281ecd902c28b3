"""Cheap checks of one engine for `gateway doctor`: is it reachable, does it accept our credentials.

Nothing here starts paid work. A vendor's credentials are checked with a status request for a
job that does not exist, which the vendor authenticates before looking the job up (401/403: the
key is refused; anything else: it was accepted). A vendor without such a call is only checked
for reachability. A GPU worker reports its health and model, and its capacity behind the secret.
"""

from __future__ import annotations

from typing import Any

import httpx
import msgspec

from gateway.config import EngineConfig

_NO_JOB = "00000000-0000-0000-0000-000000000000"


class Probe(msgspec.Struct, frozen=True):
    """What a probe found: `ok` False names what failed in `detail`."""

    ok: bool
    detail: str


def _status_call(config: EngineConfig) -> tuple[str, str, dict[str, str], Any] | None:
    """(method, path, headers, json body) of an authenticated call that costs nothing, if there is one."""
    key = str(config.api_key or "")
    if config.kind == "api2convert":
        return "GET", f"/v2/jobs/{_NO_JOB}", {"X-Oc-Api-Key": key}, None
    if config.kind == "qolaba":
        return "POST", "/getImage", {"Authorization": f"Bearer {key}"}, {"id": _NO_JOB}
    return None


async def probe_engine(name: str, config: EngineConfig, transport: httpx.AsyncBaseTransport | None = None) -> Probe:
    """Probe `config`'s service; `transport` replaces the network in tests."""
    if config.kind == "diffusion" and not config.base_url:
        return Probe(True, "in-process GPU service (the model loads when the gateway starts)")
    timeout = httpx.Timeout(min(config.request_timeout_s, 10.0), connect=min(config.connect_timeout_s, 5.0))
    async with httpx.AsyncClient(
        base_url=config.base_url.rstrip("/"), timeout=timeout, transport=transport, trust_env=False
    ) as client:
        try:
            if config.kind == "diffusion":
                return await _probe_gpu(client, config)
            return await _probe_vendor(client, config)
        except httpx.HTTPError as exc:
            return Probe(False, f"unreachable at {config.base_url}: {type(exc).__name__} {exc}".strip())


async def _probe_vendor(client: httpx.AsyncClient, config: EngineConfig) -> Probe:
    call = _status_call(config)
    if call is None:
        reply = await client.get("/")
        return Probe(
            True, f"reachable (HTTP {reply.status_code}); credentials not checked: {config.kind} has no free call"
        )
    method, path, headers, body = call
    reply = await client.request(method, path, headers=headers, json=body)
    if reply.status_code in (401, 403):
        return Probe(False, f"credentials refused (HTTP {reply.status_code}): check the key in ${config.api_key_env}")
    return Probe(True, f"reachable, credentials accepted (HTTP {reply.status_code} for a job that does not exist)")


async def _probe_gpu(client: httpx.AsyncClient, config: EngineConfig) -> Probe:
    health = await client.get("/v1/health")
    state = _field(health, "status") or f"HTTP {health.status_code}"
    if health.status_code != 200:
        return Probe(False, f"GPU service not ready: {state}")
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    capacity = await client.get("/v1/capacity", headers=headers)
    if capacity.status_code in (401, 403):
        return Probe(False, f"GPU service refused the secret in ${config.api_key_env}: it must equal the worker's")
    if capacity.status_code != 200:
        return Probe(False, f"GPU service capacity: HTTP {capacity.status_code}")
    family, device = _field(capacity, "family"), _field(capacity, "device")
    return Probe(True, f"healthy; model {family or 'unknown'} on {device or 'unknown device'}; secret accepted")


def _field(reply: httpx.Response, name: str) -> str | None:
    try:
        value = reply.json().get(name)
    except (ValueError, AttributeError):
        return None
    return str(value) if value is not None else None
