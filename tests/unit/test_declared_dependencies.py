"""Every third-party module the package imports is a declared dependency of the part that imports it,
and requirements.lock (scripts/lock) agrees with pyproject's pins.

An undeclared import works here only because something else pulled the distribution in; a wheel
installed elsewhere may not have it (markupsafe was one, through jinja2)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "gateway"


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match is not None, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"gateway", "__future__"}


def test_every_imported_distribution_is_declared() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {_name(r) for r in project["dependencies"]}
    gpu = core | {_name(r) for r in project["optional-dependencies"]["gpu"]}
    distributions = packages_distributions()
    undeclared: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        declared = gpu if path.relative_to(PACKAGE).parts[0] == "gpu" else core
        for module in sorted(_imports(path)):
            providers = {_name(d) for d in distributions.get(module, [module])}
            if not providers & declared:
                undeclared.append(f"{path.relative_to(REPO)}: {module} ({', '.join(sorted(providers))})")

    assert undeclared == []


def _pins(lines: list[str]) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in lines:
        requirement = line.split("#")[0].split(";")[0].strip()
        name, sep, version = requirement.partition("==")
        if sep:
            pins[_name(re.sub(r"\[.*\]", "", name))] = version.strip()
    return pins


def test_the_lock_agrees_with_every_pin_in_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = [project["dependencies"], *project["optional-dependencies"].values()]
    wanted = _pins([r for group in declared for r in group])
    locked = _pins((REPO / "requirements.lock").read_text().splitlines())

    assert {name: locked.get(name) for name in wanted} == wanted, "pyproject changed: run scripts/lock"
