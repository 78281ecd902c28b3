"""deploy/compose.yaml follows the Compose specification and wires the processes as designed."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import jsonschema
import pytest
import yaml

from gateway.config import load_settings
from tests.unit.deploy.conftest import DEPLOY


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return document


def _compose_schema() -> dict[str, Any]:
    # check-jsonschema vendors the compose-spec project's schema (the one `docker compose` uses).
    text = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def test_compose_file_is_valid_against_the_compose_spec(compose: dict[str, Any]) -> None:
    validator = jsonschema.Draft202012Validator(_compose_schema())

    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]

    assert errors == []


def test_schema_check_catches_a_misspelt_service_key(compose: dict[str, Any]) -> None:
    # Guards the check above: the schema refuses keys it does not know.
    broken = {**compose, "services": {**compose["services"], "api": {**compose["services"]["api"], "comand": "x"}}}

    assert list(jsonschema.Draft202012Validator(_compose_schema()).iter_errors(broken))


def test_each_process_runs_its_gateway_command(compose: dict[str, Any]) -> None:
    services = compose["services"]

    assert services["migrate"]["command"] == ["migrate"]
    assert services["api"]["command"][0] == "serve"
    assert services["worker"]["command"] == ["worker"]
    assert services["gpu"]["command"] == ["gpu-worker"]
    assert {"postgres", "minio"} <= services.keys()


def test_api_leaves_job_running_to_the_worker_service(compose: dict[str, Any]) -> None:
    assert compose["services"]["api"]["environment"]["GATEWAY_RUN_WORKER"] == "false"


@pytest.mark.parametrize("service", ["api", "worker"])
def test_gateway_processes_start_only_after_migrations_complete(compose: dict[str, Any], service: str) -> None:
    depends = compose["services"][service]["depends_on"]

    assert depends["migrate"]["condition"] == "service_completed_successfully"


def test_migrations_wait_for_a_healthy_database(compose: dict[str, Any]) -> None:
    assert compose["services"]["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert compose["services"]["migrate"]["restart"] == "no"


def test_gpu_service_reserves_an_nvidia_gpu_under_its_own_profile(compose: dict[str, Any]) -> None:
    gpu = compose["services"]["gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]

    assert device["driver"] == "nvidia"
    assert "gpu" in device["capabilities"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["dockerfile"] == "deploy/Dockerfile.gpu"


@pytest.mark.parametrize("service", ["migrate", "api", "worker", "gpu"])
def test_gateway_containers_run_read_only_without_capabilities(compose: dict[str, Any], service: str) -> None:
    definition = compose["services"][service]

    assert definition["read_only"] is True
    assert definition["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in definition["security_opt"]


def test_compose_gateway_toml_loads_with_the_compose_environment(compose: dict[str, Any]) -> None:
    environment = {
        k: str(v)
        for k, v in compose["services"]["api"]["environment"].items()
        # GATEWAY_CONFIG is the file's path inside the container: the test reads it from deploy/.
        if k != "GATEWAY_CONFIG"
    }

    settings = load_settings(environment, config_path=DEPLOY / "gateway.toml")

    assert settings.run_worker is False
    assert settings.engines["local-gpu"].base_url == "http://gpu:8090"
    assert settings.storage.kind == "s3"
    assert settings.storage.endpoint_url == "http://minio:9000"
    assert settings.storage.access_key is not None
    assert settings.storage.secret_key is not None
    assert settings.blob_signing_key is not None
