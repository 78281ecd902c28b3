"""Node command-line tools the tests run (Redocly's linter, Azure's Azurite emulator), from npm.

Each pinned package is installed once into the user's cache folder, keyed by its version, and kept
across sessions: a fresh install takes 15-30 s.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def npm_tool(package: str, command: str) -> Path:
    """The `command` of the npm `package` (pinned: "name@version"), installed if it is not yet."""
    prefix = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gateway-tests" / package
    executable = prefix / "node_modules" / ".bin" / command
    if executable.exists():
        return executable
    install = subprocess.run(
        ["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--silent", package],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    return executable
