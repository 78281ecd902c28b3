"""Every configuration that cannot work is refused at load time, naming the setting and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, Settings, load_settings
from gateway.config_sources import setting_sources
from gateway.engines.registry import check_route_capabilities

QOLABA = {"kind": "qolaba", "base_url": "http://127.0.0.1:9", "api_key_env": "QOLABA_KEY"}
A2C = {"kind": "api2convert", "base_url": "http://127.0.0.1:9", "api_key_env": "A2C_KEY"}
ENV = {"QOLABA_KEY": "q", "A2C_KEY": "a"}


def load(environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
    return load_settings({**ENV, **(environ or {})}, overrides=overrides)


def refused(pattern: str, environ: dict[str, str] | None = None, **overrides: Any) -> str:
    with pytest.raises(ConfigError, match=pattern) as caught:
        load(environ, **overrides)
    return str(caught.value)


def test_a_vendor_engine_without_base_url_is_refused_naming_the_key() -> None:
    message = refused(r"^engines\.q\.base_url: required", engines={"q": {**QOLABA, "base_url": ""}})
    assert "vendor's API address" in message


def test_a_vendor_engine_without_api_key_env_is_refused() -> None:
    engine = {k: v for k, v in QOLABA.items() if k != "api_key_env"}
    message = refused(r"^engines\.q\.api_key_env: required", engines={"q": engine})
    assert "environment variable" in message


def test_an_unset_api_key_variable_is_refused_naming_the_variable_and_the_fix() -> None:
    message = refused(
        r"^engines\.q\.api_key_env: environment variable NOPE is not set",
        engines={"q": {**QOLABA, "api_key_env": "NOPE"}},
    )
    assert "export it with your qolaba API key" in message


def test_an_empty_api_key_variable_is_refused_as_empty() -> None:
    refused(r"QOLABA_KEY is empty", {"QOLABA_KEY": ""}, engines={"q": QOLABA})


def test_an_engine_base_url_must_be_http() -> None:
    refused(r"^engines\.q\.base_url: must be an http\(s\) URL", engines={"q": {**QOLABA, "base_url": "ftp://x"}})


def test_a_route_naming_an_unknown_engine_is_refused_with_the_engines_there_are() -> None:
    message = refused(
        r"^routes\.text-to-image: unknown engine 'qolab'", engines={"q": QOLABA}, routes={"text-to-image": ["qolab"]}
    )
    assert "add an [engines.qolab] table or remove it from the route (engines configured: q)" in message


def test_an_operation_no_routed_engine_can_do_is_refused_naming_who_can() -> None:
    settings = load(engines={"a2c": A2C, "q": QOLABA}, routes={"image-to-image": ["a2c"]})
    with pytest.raises(ConfigError, match=r"^routes\.image-to-image: no engine listed \(a2c\) can do") as caught:
        check_route_capabilities(settings)
    assert "route it to one that can (q)" in str(caught.value)


def test_an_empty_route_is_refused() -> None:
    settings = load(engines={"q": QOLABA}, routes={"inpaint": []})
    with pytest.raises(ConfigError, match=r"^routes\.inpaint: empty"):
        check_route_capabilities(settings)


def test_a_remote_gpu_engine_without_a_secret_is_refused() -> None:
    message = refused(
        r"^engines\.gpu\.api_key_env: a remote GPU worker",
        engines={"gpu": {"kind": "diffusion", "base_url": "http://h:8090"}},
    )
    assert "gpu.secret_env" in message


def test_a_gpu_engine_and_its_worker_with_different_secrets_are_refused() -> None:
    environ = {"ENGINE_SECRET": "one", "WORKER_SECRET": "two"}
    engine = {"kind": "diffusion", "base_url": "http://127.0.0.1:8090", "api_key_env": "ENGINE_SECRET"}
    message = refused(
        r"^engines\.gpu\.api_key_env: ENGINE_SECRET differs from gpu\.secret_env \(WORKER_SECRET\)",
        environ,
        engines={"gpu": engine},
        gpu={"secret_env": "WORKER_SECRET", "port": 8090},
    )
    assert "give both variables the same value" in message
    same = load(
        {"ENGINE_SECRET": "s", "WORKER_SECRET": "s"}, engines={"gpu": engine}, gpu={"secret_env": "WORKER_SECRET"}
    )
    assert same.engines["gpu"].api_key == same.gpu.shared_secret


def test_a_missing_gpu_worker_secret_variable_is_refused() -> None:
    refused(r"^gpu\.secret_env: environment variable WORKER_SECRET is not set", gpu={"secret_env": "WORKER_SECRET"})


def test_s3_without_credentials_is_refused_naming_the_variable() -> None:
    message = refused(
        r"^storage\.access_key_env: environment variable AWS_ACCESS_KEY_ID is not set",
        storage={"kind": "s3", "bucket": "b"},
    )
    assert "name another variable in storage.access_key_env" in message


def test_public_base_url_must_be_http() -> None:
    refused(r"^public_base_url: must be an http\(s\) URL", public_base_url="gateway.example.com")


def test_a_diffusion_engine_without_base_url_is_the_in_process_service() -> None:
    settings = load(engines={"q": QOLABA, "local": {"kind": "diffusion"}}, routes={"text-to-image": ["q", "local"]})
    check_route_capabilities(settings)
    assert settings.engines["local"].base_url == ""


def test_sources_say_file_environment_or_default_and_mask_secrets(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        'port = 9000\n[engines.q]\nkind = "qolaba"\nbase_url = "http://127.0.0.1:9"\napi_key_env = "QOLABA_KEY"\n'
    )
    environ = {
        "QOLABA_KEY": "very-secret",
        "GATEWAY_LOG_LEVEL": "debug",
        "GATEWAY_DATABASE_URL": "postgresql://u:pw@h/db",
    }
    settings = load_settings(environ, config_path=config)
    rows = {key: (value, source) for key, value, source in setting_sources(settings, environ, config_path=config)}
    assert rows["port"] == ("9000", "file")
    assert rows["log_level"] == ("debug", "environment (GATEWAY_LOG_LEVEL)")
    assert rows["host"] == ("127.0.0.1", "default")
    assert rows["database_url"] == ("postgresql://u:***@h/db", "environment (GATEWAY_DATABASE_URL)")
    assert rows["engines.q.base_url"] == ("http://127.0.0.1:9", "file")
    assert rows["engines.q.api_key"] == ("***", "environment (QOLABA_KEY)")
    assert all("very-secret" not in value and "pw@" not in value for value, _ in rows.values())
