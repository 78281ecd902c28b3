"""The kustomize overlays render, validate against the Kubernetes schemas, and keep our rules."""

from __future__ import annotations

import base64
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from gateway.config import load_settings
from tests.unit.deploy.conftest import DEPLOY

# The oldest Kubernetes minor the manifests promise to run on (autoscaling/v2, policy/v1 PDBs).
KUBERNETES_VERSION = "1.29"

Rendered = tuple[str, list[dict[str, Any]]]


def _find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def _pod_specs(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (o["metadata"]["name"], o["spec"]["template"]["spec"]) for o in objects if o["kind"] in {"Deployment", "Job"}
    ]


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def test_every_rendered_object_is_valid_for_kubernetes(rendered: Rendered) -> None:
    _, objects = rendered
    for obj in objects:
        # strict: an unknown field (a typo such as `readinessprobe`) fails instead of being dropped.
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_every_container_runs_unprivileged_on_a_read_only_root(rendered: Rendered) -> None:
    _, objects = rendered
    for name, pod in _pod_specs(objects):
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] != 0, name
        assert pod["automountServiceAccountToken"] is False, name
        for container in _containers(pod):
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, (name, container["name"])
            assert security["allowPrivilegeEscalation"] is False, (name, container["name"])
            assert security["capabilities"]["drop"] == ["ALL"], (name, container["name"])


def test_every_container_has_requests_and_limits(rendered: Rendered) -> None:
    _, objects = rendered
    for name, pod in _pod_specs(objects):
        for container in _containers(pod):
            resources = container["resources"]
            for kind in ("cpu", "memory"):
                assert kind in resources["requests"], (name, container["name"], kind)
                assert kind in resources["limits"], (name, container["name"], kind)


def test_api_probes_healthz_for_liveness_and_readyz_for_readiness(rendered: Rendered) -> None:
    _, objects = rendered
    api = _find(objects, "Deployment", "gateway-api")["spec"]["template"]["spec"]["containers"][0]

    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["ports"] == [{"name": "http", "containerPort": 8000}]
    assert {"name": "GATEWAY_RUN_WORKER", "value": "false"} in api["env"]


def test_api_pods_migrate_before_serving(rendered: Rendered) -> None:
    _, objects = rendered
    pod = _find(objects, "Deployment", "gateway-api")["spec"]["template"]["spec"]

    (init,) = pod["initContainers"]
    assert init["args"] == ["migrate"]
    assert init["image"] == pod["containers"][0]["image"]


def test_migrate_job_runs_the_same_image_once(rendered: Rendered) -> None:
    _, objects = rendered
    job = _find(objects, "Job", "gateway-migrate")
    api = _find(objects, "Deployment", "gateway-api")

    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["migrate"]
    assert container["image"] == api["spec"]["template"]["spec"]["containers"][0]["image"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_runner_runs_the_worker_command(rendered: Rendered) -> None:
    _, objects = rendered
    runner = _find(objects, "Deployment", "gateway-runner")["spec"]["template"]["spec"]["containers"][0]

    assert runner["args"] == ["worker"]


def test_hpa_and_pdb_select_the_api_deployment(rendered: Rendered) -> None:
    _, objects = rendered
    api = _find(objects, "Deployment", "gateway-api")
    hpa = _find(objects, "HorizontalPodAutoscaler", "gateway-api")
    pdb = _find(objects, "PodDisruptionBudget", "gateway-api")
    pod_labels = api["spec"]["template"]["metadata"]["labels"]

    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway-api"}
    assert hpa["spec"]["minReplicas"] <= api["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_services_select_pods_on_their_named_ports(rendered: Rendered) -> None:
    _, objects = rendered
    for name, port in [("gateway-api", 8000), ("gateway-gpu", 8090)]:
        service = _find(objects, "Service", name)
        pod = _find(objects, "Deployment", name)["spec"]["template"]
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        container_ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
        assert container_ports[service["spec"]["ports"][0]["targetPort"]] == port


def test_gpu_service_gets_a_gpu_in_production_and_none_in_dev(rendered: Rendered) -> None:
    overlay, objects = rendered
    gpu = _find(objects, "Deployment", "gateway-gpu")["spec"]["template"]["spec"]["containers"][0]

    assert gpu["args"] == ["gpu-worker"]
    if overlay == "production":
        assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    else:
        assert "nvidia.com/gpu" not in gpu["resources"]["limits"]


def test_network_policy_admits_the_api_and_runner_pods_to_the_gpu_service(rendered: Rendered) -> None:
    _, objects = rendered
    policy = _find(objects, "NetworkPolicy", "gateway-gpu-ingress")
    allowed = [peer["podSelector"]["matchLabels"] for peer in policy["spec"]["ingress"][0]["from"]]

    for name in ("gateway-api", "gateway-runner"):
        labels = _find(objects, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert any(selector.items() <= labels.items() for selector in allowed), name


def test_referenced_config_maps_and_secrets_exist_or_are_external(rendered: Rendered) -> None:
    overlay, objects = rendered
    present = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for name, pod in _pod_specs(objects):
        for container in _containers(pod):
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert ("ConfigMap", source["configMapRef"]["name"]) in present, name
                else:
                    secret = source["secretRef"]["name"]
                    # Production's secret comes from the cluster's secret manager, not from git.
                    external = overlay == "production" and secret == "gateway-secrets"
                    assert external or ("Secret", secret) in present, name
        for volume in pod["volumes"]:
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in present, name


def test_no_secret_value_is_committed(rendered: Rendered) -> None:
    overlay, objects = rendered
    secrets = [o for o in objects if o["kind"] == "Secret"]
    if overlay == "production":
        assert secrets == []
    for secret in secrets:
        decoded = [base64.b64decode(value).decode() for value in secret.get("data", {}).values()]
        assert decoded
        assert all("REPLACE_ME" in value for value in decoded)


def test_production_talks_to_pgbouncer_without_prepared_statements(rendered: Rendered) -> None:
    overlay, objects = rendered
    env = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("gateway-env"))
    if overlay == "production":
        assert env["data"]["GATEWAY_DB_STATEMENT_CACHE_SIZE"] == "0"


def _secret_keys() -> dict[str, str]:
    example = yaml.safe_load((DEPLOY / "k8s/overlays/production/gateway-secrets.example.yaml").read_text())
    return dict.fromkeys(example["stringData"], "placeholder")


def test_production_secret_example_is_a_valid_secret_with_placeholders_only() -> None:
    example = yaml.safe_load((DEPLOY / "k8s/overlays/production/gateway-secrets.example.yaml").read_text())

    kubernetes_validate.validate(example, KUBERNETES_VERSION, strict=True)
    assert all("REPLACE_ME" in value for value in example["stringData"].values())


@pytest.mark.parametrize(
    "path",
    ["gateway.toml", "k8s/base/gateway.toml", "k8s/overlays/dev/gateway.toml", "k8s/overlays/production/gateway.toml"],
)
def test_shipped_gateway_toml_loads_as_settings(path: str) -> None:
    # The same loader as `gateway serve`; every variable the file names must be a key of the Secret.
    settings = load_settings(_secret_keys(), config_path=DEPLOY / path)

    assert settings.routes, path
    assert settings.storage.kind == "s3", path
    assert settings.storage.bucket, path
    assert settings.storage.access_key is not None
    assert settings.storage.secret_key is not None
    assert settings.blob_signing_key is not None


def test_gpu_probes_wait_for_the_model_without_killing_a_loading_pod(rendered: Rendered) -> None:
    _, objects = rendered
    gpu = _find(objects, "Deployment", "gateway-gpu")["spec"]["template"]["spec"]["containers"][0]

    assert gpu["startupProbe"]["httpGet"]["path"] == "/v1/health"
    assert gpu["readinessProbe"]["httpGet"]["path"] == "/v1/health"
    assert "tcpSocket" in gpu["livenessProbe"]
