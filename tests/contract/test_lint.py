"""Redocly CLI's recommended ruleset finds no error and no warning in the committed document
(openapi/redocly.yaml; the accepted findings, each with its reason, in openapi/.redocly.lint-ignore.yaml)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.e2e.processes import REPO
from tests.npm import npm_tool

REDOCLY = "@redocly/cli@2.77.0"


@pytest.mark.skipif(shutil.which("npm") is None, reason="Node.js (npm) is not on this machine")
@pytest.mark.timeout(300 + 120 + 60)  # its npm install and lint limits, and the rest
def test_the_document_passes_redoclys_recommended_rules() -> None:
    lint = subprocess.run(
        [str(npm_tool(REDOCLY, "redocly")), "lint", "gateway.json", "--config", "redocly.yaml"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO / "openapi",
        check=False,
    )
    output = lint.stdout + lint.stderr
    assert lint.returncode == 0, output
    assert "valid" in output, output
    assert "warning" not in output.replace("Deprecation warning", "").lower(), output
