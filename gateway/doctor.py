"""`gateway doctor`: load the configuration and check, one by one, everything a gateway needs.

It shows every effective setting (secrets masked) and where it came from, then checks the
database (reachable, migrations applied), the blob store (write, read and delete a probe object),
each engine (reachable, credentials accepted where the vendor has a free authenticated call; the
GPU service's health and model) and every route. A failed check makes the exit status 1; a
warning (migrations that `gateway serve` will apply, an operation with no route) does not.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import httpx
import msgspec

from gateway.config import ConfigError, Settings, load_settings
from gateway.config_sources import setting_sources
from gateway.domain.generation import OPERATIONS

Status = Literal["ok", "warn", "fail"]


class Check(msgspec.Struct, frozen=True):
    name: str
    status: Status
    detail: str


class Setting(msgspec.Struct, frozen=True):
    key: str
    value: str
    source: str


class Report(msgspec.Struct, frozen=True):
    ok: bool
    config_file: str | None
    settings: list[Setting]
    checks: list[Check]


async def run_doctor(
    environ: Mapping[str, str] | None = None, *, transport: httpx.AsyncBaseTransport | None = None
) -> Report:
    """Every check, in order; `transport` replaces the network to the engines in tests."""
    env = os.environ if environ is None else environ
    config_file = env.get("GATEWAY_CONFIG")
    try:
        settings = load_settings(env)
        rows = setting_sources(settings, env)
    except ConfigError as exc:
        return Report(False, config_file, [], [Check("configuration", "fail", str(exc))])
    checks = [Check("configuration", "ok", f"{config_file or 'no file'}; GATEWAY_* variables; defaults")]
    checks += _route_checks(settings)
    checks += _input_url_check(settings)
    checks.append(await _database_check(settings))
    checks.append(await _blob_check(settings))
    checks += await _engine_checks(settings, transport)
    settings_rows = [Setting(key, value, source) for key, value, source in rows]
    return Report(all(c.status != "fail" for c in checks), config_file, settings_rows, checks)


def _route_checks(settings: Settings) -> list[Check]:
    from gateway.engines.registry import capabilities, check_route_capabilities  # noqa: PLC0415

    if not settings.engines:
        return [Check("routes", "ok", "no engines configured: every operation runs on the in-process model")]
    try:
        check_route_capabilities(settings)
    except ConfigError as exc:
        return [Check("routes", "fail", str(exc))]
    checks: list[Check] = []
    urls = settings.storage.presigns or bool(settings.public_base_url)
    for operation in OPERATIONS:
        names = settings.routes.get(operation, [])
        if not names:
            checks.append(Check(f"route {operation}", "warn", "not routed: these requests get 422"))
            continue
        able = [n for n in names if operation in capabilities(settings.engines[n].kind).operations]
        detail = " -> ".join(able)
        if operation != "text-to-image" and not urls:
            by_url = [n for n in able if capabilities(settings.engines[n].kind).needs_input_url]
            if by_url and len(by_url) == len(able):
                fix = "set public_base_url (the gateway serves inputs at signed URLs) or use an S3 or Azure store"
                checks.append(Check(f"route {operation}", "fail", f"{', '.join(by_url)} fetch inputs by URL: {fix}"))
                continue
            if by_url:
                detail += f" ({', '.join(by_url)} skipped: inputs need URLs; set public_base_url)"
        checks.append(Check(f"route {operation}", "ok", detail))
    return checks


def _input_url_check(settings: Settings) -> list[Check]:
    """How vendors that fetch inputs by URL get them, when one is configured and there is a way."""
    from gateway.engines.registry import capabilities  # noqa: PLC0415

    if not any(capabilities(cfg.kind).needs_input_url for cfg in settings.engines.values()):
        return []
    if settings.storage.presigns:
        ttl = settings.storage.presign_ttl_s
        return [Check("input URLs", "ok", f"presigned by the {settings.storage.kind} store, valid {ttl} s")]
    if not settings.public_base_url:
        return []  # the routes that need them say so
    key = (
        "GATEWAY_BLOB_SIGNING_KEY"
        if settings.blob_signing_key
        else f"{settings.data_path / 'blob-signing.key'} (made at first start; replicas must share it)"
    )
    base = settings.public_base_url.rstrip("/")
    return [Check("input URLs", "ok", f"served at {base}/v1/blobs/... until each job ends; signing key: {key}")]


async def _database_check(settings: Settings) -> Check:
    from gateway.db.embedded import start_embedded  # noqa: PLC0415
    from gateway.db.health import database_state  # noqa: PLC0415

    embedded = None
    where = "GATEWAY_DATABASE_URL"
    dsn = settings.database_url
    if not dsn:
        where = f"embedded in {settings.data_path / 'pg'}"
        try:
            embedded = await asyncio.to_thread(start_embedded, settings.data_path)
        except Exception as exc:  # initdb or pg_ctl failing: report it, whatever its type
            return Check("database", "fail", f"{where}: cannot start: {type(exc).__name__}: {exc}")
        dsn = embedded.uri
    try:
        state = await database_state(dsn)
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
    if state.error is not None:
        return Check("database", "fail", f"{where}: {state.error}")
    detail = f"{where}: PostgreSQL {state.server_version}, {state.applied} migrations applied"
    if state.pending:
        fix = "`gateway serve` applies them at start, or run `gateway migrate`"
        return Check("database", "warn", f"{detail}, {len(state.pending)} pending ({fix})")
    return Check("database", "ok", detail)


async def _blob_check(settings: Settings) -> Check:
    from gateway.bootstrap import build_blob_store  # noqa: PLC0415

    where = (
        settings.storage.location
        if settings.storage.presigns
        else f"filesystem {Path(settings.storage.path) if settings.storage.path else settings.data_path / 'blobs'}"
    )
    key = f"doctor/probe-{secrets.token_hex(8)}"
    data = secrets.token_bytes(32)
    step = "open"
    try:
        store = build_blob_store(settings)
        try:
            step = "write"
            await store.put(key, data, "application/octet-stream")
            step = "read"
            if await store.get(key) != data:
                return Check("blob store", "fail", f"{where}: read back different bytes than written")
            step = "delete"
            await store.delete(key)
        finally:
            await store.aclose()
    except Exception as exc:  # any store, any failure: the operator needs its name and message
        return Check("blob store", "fail", f"{where}: {step} failed: {type(exc).__name__}: {exc}")
    return Check("blob store", "ok", f"{where}: write, read, delete")


async def _engine_checks(settings: Settings, transport: httpx.AsyncBaseTransport | None) -> list[Check]:
    from gateway.engines.probe import probe_engine  # noqa: PLC0415

    names = list(settings.engines)
    probes = await asyncio.gather(*(probe_engine(n, settings.engines[n], transport) for n in names))
    checks = [
        Check(f"engine {name}", "ok" if probe.ok else "fail", probe.detail)
        for name, probe in zip(names, probes, strict=True)
    ]
    local = not settings.engines or any(c.kind == "diffusion" and not c.base_url for c in settings.engines.values())
    if local:
        checks.append(_local_model_check(settings))
    return checks


def _local_model_check(settings: Settings) -> Check:
    path = settings.gpu.model_path
    if path is None:
        where = settings.data_path / "demo-model"
        return Check("local model", "ok", f"the demo model in {where} (built on first start if missing)")
    if not (Path(path) / "model_index.json").is_file():
        return Check("local model", "fail", f"gpu.model_path: {path} is not a diffusers folder (no model_index.json)")
    return Check("local model", "ok", f"{path}, device {settings.gpu.device}, dtype {settings.gpu.dtype}")


def render(report: Report) -> str:
    """The report as text: the settings, then one line per check."""
    lines: list[str] = []
    if report.settings:
        width = max(len(s.key) for s in report.settings)
        value_width = min(48, max(len(s.value) for s in report.settings))
        lines.append(f"{'SETTING':<{width}}  {'VALUE':<{value_width}}  SOURCE")
        for s in report.settings:
            value = s.value if len(s.value) <= 48 else s.value[:45] + "..."
            lines.append(f"{s.key:<{width}}  {value:<{value_width}}  {s.source}")
        lines.append("")
    width = max(len(c.name) for c in report.checks)
    lines.append(f"{'CHECK':<{width}}  STATUS  DETAIL")
    lines += [f"{c.name:<{width}}  {c.status.upper():<6}  {c.detail}" for c in report.checks]
    failed = [c.name for c in report.checks if c.status == "fail"]
    lines.append("")
    lines.append(f"FAILED: {', '.join(failed)}" if failed else "all checks passed")
    return "\n".join(lines)


def main(as_json: bool) -> int:
    """Run the checks, print them, and return the exit status (1 when any failed)."""
    report = asyncio.run(run_doctor())
    print(msgspec.json.encode(report).decode() if as_json else render(report))
    return 0 if report.ok else 1
