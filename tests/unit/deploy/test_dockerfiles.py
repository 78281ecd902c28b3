"""The container images: right bases, non-root users, the `gateway` entry point, the right ports."""

from __future__ import annotations

import dockerfile  # type: ignore[import-not-found]
import pytest

from tests.unit.deploy.conftest import DEPLOY


def _commands(name: str) -> list[dockerfile.Command]:
    commands: list[dockerfile.Command] = list(dockerfile.parse_file(str(DEPLOY / name)))
    return commands


def _final_stage(name: str) -> list[dockerfile.Command]:
    commands = _commands(name)
    last_from = max(i for i, c in enumerate(commands) if c.cmd == "FROM")
    return commands[last_from:]


def _args(name: str) -> dict[str, str]:
    return dict(c.value[0].split("=", 1) for c in _commands(name) if c.cmd == "ARG" and "=" in c.value[0])


@pytest.mark.parametrize(("name", "port"), [("Dockerfile", "8000"), ("Dockerfile.gpu", "8090")])
def test_final_stage_runs_as_an_unprivileged_numeric_user(name: str, port: str) -> None:
    stage = _final_stage(name)
    users = [c.value[0] for c in stage if c.cmd == "USER"]

    assert users, name
    uid = users[-1].split(":")[0]
    assert uid.isdigit()  # numeric: runAsNonRoot can only verify a numeric user
    assert int(uid) >= 1000
    assert [c.value for c in stage if c.cmd == "EXPOSE"] == [(port,)]
    assert [c.value for c in stage if c.cmd == "ENTRYPOINT"] == [("gateway",)]


def test_api_image_builds_on_python_3_11_slim() -> None:
    assert _args("Dockerfile")["PYTHON_IMAGE"] == "python:3.11-slim"
    assert [c.value[0] for c in _commands("Dockerfile") if c.cmd == "FROM"] == ["${PYTHON_IMAGE}"] * 2


def test_gpu_image_builds_on_cuda_and_installs_the_gpu_extra() -> None:
    assert _args("Dockerfile.gpu")["CUDA_IMAGE"].startswith("nvidia/cuda:")
    runs = " ".join(" ".join(c.value) for c in _commands("Dockerfile.gpu") if c.cmd == "RUN")
    assert 'pip install -c requirements.lock ".[gpu]"' in runs
    assert "torch==2.13.0" in runs  # the same pin as pyproject's gpu extra, from the CUDA index


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_image_builds_the_wheel_from_the_package_and_its_migrations(name: str) -> None:
    copies = [c.value for c in _commands(name) if c.cmd == "COPY" and not c.flags]
    runs = " ".join(" ".join(c.value) for c in _commands(name) if c.cmd == "RUN")

    # gateway/db/migration_files links to migrations/: the wheel build needs both in the context.
    assert ("migrations", "./migrations") in copies
    assert ("gateway", "./gateway") in copies
    assert "pip install -e" not in runs  # a regular install: the wheel carries the migrations
    assert "-c requirements.lock" in runs  # transitive versions as tested
    assert ("pyproject.toml", "README.md", "requirements.lock", "./") in copies


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_final_stage_takes_only_the_installed_venv_from_the_build(name: str) -> None:
    copies = [c.value for c in _final_stage(name) if c.cmd == "COPY"]

    assert copies == [("/opt/venv", "/opt/venv")]


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_build_context_is_limited_to_what_the_image_needs(name: str) -> None:
    ignore = (DEPLOY / f"{name}.dockerignore").read_text().splitlines()

    assert "*" in ignore
    assert {"!gateway/", "!migrations/", "!pyproject.toml", "!requirements.lock"} <= set(ignore)
