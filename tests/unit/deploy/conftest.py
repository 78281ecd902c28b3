"""Rendering of the deploy/ manifests, shared by the manifest tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
OVERLAYS = ("dev", "production")


def render_overlay(overlay: str) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize` renders for one overlay.

    kubectl bundles kustomize; the machines this project runs on have it from Debian's
    `kubectl` package. Without it the manifest tests skip rather than test a stand-in renderer.
    """
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its bundled kustomize) is not installed")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


@pytest.fixture(scope="session", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    """(overlay name, its rendered objects), once per overlay for the whole session."""
    overlay: str = request.param
    return overlay, render_overlay(overlay)
