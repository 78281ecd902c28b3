"""Where each effective setting came from (gateway.toml, a GATEWAY_* variable, or the default), with
secrets masked: what `gateway doctor` shows an operator before it checks anything."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import msgspec

from gateway.config import Secret, Settings, read_config_file

# Settings whose value is a secret: shown masked, and only ever read from the environment.
SECRET_FIELDS = frozenset(
    {"api_key", "shared_secret", "blob_signing_key", "access_key", "secret_key", "account_key", "service_account_key"}
)


def setting_sources(
    settings: Settings,
    environ: Mapping[str, str] | None = None,
    *,
    config_path: str | os.PathLike[str] | None = None,
) -> list[tuple[str, str, str]]:
    """Every effective setting as (dotted key, shown value, source): "file", "environment (VAR)"
    or "default". Secrets show as "***" (or "unset"); a database URL hides its password."""
    env = os.environ if environ is None else environ
    raw, _ = read_config_file(env, config_path)
    from_env = {key.removeprefix("GATEWAY_").lower(): key for key in env if key.startswith("GATEWAY_")}
    rows: list[tuple[str, str, str]] = []

    def in_file(parts: list[str]) -> bool:
        node: Any = raw
        for part in parts:
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    def walk(value: Any, parts: list[str], var_of: dict[str, str | None]) -> None:
        if isinstance(value, dict) and value and parts and parts[-1] not in {"options", "routes"}:
            for key, item in value.items():
                walk(item, [*parts, str(key)], var_of)
            return
        key = ".".join(parts)
        leaf = parts[-1]
        if leaf in SECRET_FIELDS:
            var = var_of.get(leaf)
            rows.append((key, "***" if value else "unset", f"environment ({var})" if value and var else "-"))
            return
        env_name = from_env.get("_".join(parts))
        source = "file" if in_file(parts) else "default"
        if env_name is not None:
            source = f"environment ({env_name})"
        rows.append((key, _show(key, value), source))

    # Secrets become plain strings here only to be replaced by "***" below.
    builtins = msgspec.to_builtins(settings, enc_hook=lambda value: str(value) if isinstance(value, Secret) else value)
    for name, value in builtins.items():
        if name in {"engines", "routes"} and isinstance(value, dict):
            for sub, item in value.items():
                if name == "engines":
                    cfg = settings.engines[sub]
                    walk(item, [name, str(sub)], {"api_key": cfg.api_key_env})
                else:
                    source = "file" if in_file([name, str(sub)]) else "default"
                    rows.append((f"{name}.{sub}", ", ".join(item), source))
            continue
        var_of: dict[str, str | None] = {
            "blob_signing_key": "GATEWAY_BLOB_SIGNING_KEY",
            "shared_secret": settings.gpu.secret_env,
            "access_key": settings.storage.access_key_env,
            "secret_key": settings.storage.secret_key_env,
            "account_key": settings.storage.account_key_env,
            "service_account_key": settings.storage.service_account_key_env,
        }
        walk(value, [name], var_of)
    return rows


def _show(key: str, value: Any) -> str:
    if value is None:
        return "unset"
    if value == "":
        return '""'
    if key == "database_url" and isinstance(value, str):
        parts = urlsplit(value)
        if parts.password:
            return value.replace(f":{parts.password}@", ":***@", 1)
    if isinstance(value, list | dict):
        return msgspec.json.encode(value).decode()
    return str(value)
