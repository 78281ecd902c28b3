"""`gateway doctor` against the fake vendors and a real database: 0 when everything works, and
non-zero naming each broken part (configuration, database, blob store, engine, route)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.doctor import Report, render, run_doctor

Environ = Callable[..., dict[str, str]]


@pytest.fixture
def doctor_env(
    database_url: str, data_dir: Path, tmp_path: Path, fake_api2convert: Any, fake_qolaba: Any, fake_aithriving: Any
) -> Environ:
    """The environment of an operator's shell: a gateway.toml for the fakes, the database, the keys.
    Keyword arguments replace variables; `toml` appends lines to the file."""

    def make(toml: str = "", routes: str | None = None, **variables: str) -> dict[str, str]:
        config = tmp_path / "gateway.toml"
        config.write_text(
            f"""
[engines.a2c]
kind = "api2convert"
base_url = "{fake_api2convert.base_url}"
api_key_env = "A2C_KEY"

[engines.qolaba]
kind = "qolaba"
base_url = "{fake_qolaba.base_url}"
api_key_env = "QOLABA_KEY"

[engines.ait]
kind = "aithriving"
base_url = "{fake_aithriving.base_url}"
api_key_env = "AITHRIVING_KEY"

[routes]
{routes if routes is not None else '"text-to-image" = ["a2c", "qolaba"]'}
"image-to-image" = ["ait"]
"inpaint" = ["a2c"]
{toml}
"""
        )
        env = {
            "PATH": os.environ.get("PATH", ""),
            "LC_ALL": "C.UTF-8",
            "GATEWAY_CONFIG": str(config),
            "GATEWAY_DATABASE_URL": database_url,
            "GATEWAY_DATA_DIR": str(data_dir),
            "A2C_KEY": "test-key",
            "QOLABA_KEY": "test-key",
            "AITHRIVING_KEY": "test-key",
        }
        env.update(variables)
        return env

    return make


def statuses(report: Report) -> dict[str, str]:
    return {check.name: check.status for check in report.checks}


def failed(report: Report) -> dict[str, str]:
    return {check.name: check.detail for check in report.checks if check.status == "fail"}


async def test_a_healthy_setup_passes_every_check_and_shows_where_settings_came_from(doctor_env: Environ) -> None:
    report = await run_doctor(doctor_env())
    assert report.ok, render(report)
    assert statuses(report) == {
        "configuration": "ok",
        "route text-to-image": "ok",
        "route image-to-image": "ok",
        "route inpaint": "ok",
        "database": "ok",
        "blob store": "ok",
        "engine a2c": "ok",
        "engine qolaba": "ok",
        "engine ait": "ok",
    }
    details = {check.name: check.detail for check in report.checks}
    assert "credentials accepted" in details["engine qolaba"]
    assert "credentials accepted" in details["engine a2c"]
    assert "write, read, delete" in details["blob store"]
    settings = {s.key: (s.value, s.source) for s in report.settings}
    assert settings["engines.qolaba.api_key"] == ("***", "environment (QOLABA_KEY)")
    assert settings["engines.qolaba.kind"] == ("qolaba", "file")
    assert settings["port"] == ("8000", "default")
    assert settings["data_dir"][1] == "environment (GATEWAY_DATA_DIR)"
    assert "test-key" not in render(report)


async def test_an_unreachable_database_fails_its_check(doctor_env: Environ) -> None:
    report = await run_doctor(doctor_env(GATEWAY_DATABASE_URL="postgresql://gateway@127.0.0.1:1/gateway"))
    assert not report.ok
    assert list(failed(report)) == ["database"]
    assert "unreachable" in failed(report)["database"]


async def test_pending_migrations_warn_without_failing(doctor_env: Environ, empty_database_url: str) -> None:
    report = await run_doctor(doctor_env(GATEWAY_DATABASE_URL=empty_database_url))
    assert report.ok
    assert statuses(report)["database"] == "warn"


async def test_a_blob_store_that_cannot_be_written_fails_its_check(doctor_env: Environ, tmp_path: Path) -> None:
    not_a_folder = tmp_path / "blobs-file"
    not_a_folder.write_text("x")
    report = await run_doctor(doctor_env(f'[storage]\npath = "{not_a_folder}"'))
    assert list(failed(report)) == ["blob store"]


async def test_a_refused_key_and_an_unreachable_vendor_fail_their_engines(doctor_env: Environ) -> None:
    report = await run_doctor(doctor_env(QOLABA_KEY="wrong"))
    assert list(failed(report)) == ["engine qolaba"]
    assert "credentials refused (HTTP 401)" in failed(report)["engine qolaba"]
    assert "$QOLABA_KEY" in failed(report)["engine qolaba"]


async def test_an_unreachable_vendor_fails_its_engine(doctor_env: Environ, fake_aithriving: Any) -> None:
    env = doctor_env()
    config = Path(env["GATEWAY_CONFIG"])
    config.write_text(config.read_text().replace(fake_aithriving.base_url, "http://127.0.0.1:1"))
    report = await run_doctor(env)
    assert list(failed(report)) == ["engine ait"]
    assert "unreachable at http://127.0.0.1:1" in failed(report)["engine ait"]


async def test_a_route_nothing_can_serve_fails_naming_it(doctor_env: Environ) -> None:
    report = await run_doctor(doctor_env(routes='"text-to-image" = ["ait"]'))
    assert list(failed(report)) == ["routes"]
    assert "routes.text-to-image" in failed(report)["routes"]


async def test_a_route_to_a_url_only_vendor_without_input_urls_fails(doctor_env: Environ) -> None:
    env = doctor_env()
    config = Path(env["GATEWAY_CONFIG"])
    config.write_text(config.read_text().replace('"image-to-image" = ["ait"]', '"image-to-image" = ["qolaba"]'))
    report = await run_doctor(env)
    assert list(failed(report)) == ["route image-to-image"]
    assert "public_base_url" in failed(report)["route image-to-image"]
    fixed = await run_doctor({**env, "GATEWAY_PUBLIC_BASE_URL": "https://gateway.example"})
    assert fixed.ok, render(fixed)
    urls = {check.name: check.detail for check in fixed.checks}["input URLs"]
    assert urls.startswith("served at https://gateway.example/v1/blobs/")


async def test_a_configuration_error_is_reported_as_the_one_failure(doctor_env: Environ) -> None:
    report = await run_doctor(doctor_env(routes='"text-to-image" = ["qolab"]'))
    assert not report.ok
    assert list(failed(report)) == ["configuration"]
    assert "unknown engine 'qolab'" in failed(report)["configuration"]


def test_the_command_exits_0_when_healthy_and_1_naming_what_failed(doctor_env: Environ) -> None:
    command = [sys.executable, "-m", "gateway.cli", "doctor"]
    healthy = subprocess.run(
        [*command, "--json"], check=False, env=doctor_env(), capture_output=True, text=True, timeout=120
    )
    assert healthy.returncode == 0, healthy.stderr
    assert json.loads(healthy.stdout)["ok"] is True
    broken = subprocess.run(
        command, check=False, env=doctor_env(QOLABA_KEY="wrong"), capture_output=True, text=True, timeout=120
    )
    assert broken.returncode == 1
    assert "FAILED: engine qolaba" in broken.stdout
