"""An installed wheel migrates on its own: no checkout beside it, `gateway migrate` finds its SQL.

The wheel is built from a copy of what the container build copies (pyproject.toml, README.md,
gateway/, migrations/), installed without dependencies into a fresh venv, and run from elsewhere.
The dependencies come from this test's environment through a `.pth` line: a `.pth` file's plain
path lines are appended to sys.path without processing the `.pth` files found there, so this
environment's editable install of the gateway stays out of reach and the wheel's copy is the one run.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import asyncpg
import pytest

from tests.e2e.processes import REPO, gateway_env

PREFIX = "gateway/db/migration_files/"


def _run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    # symlinks=True: the copy keeps gateway/db/migration_files a link, as git and `docker COPY` do.
    shutil.copytree(REPO / "gateway", source / "gateway", symlinks=True, ignore=skip)
    shutil.copytree(REPO / "migrations", source / "migrations", ignore=skip)
    assert (source / "gateway/db/migration_files").is_symlink()
    out = tmp_path_factory.mktemp("wheel")
    _run(sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q", "-w", out, cwd=source)
    (built,) = out.glob("gateway-*.whl")
    return built


def test_wheel_carries_every_migration_byte_for_byte(wheel: Path) -> None:
    sources = {p.name: p.read_bytes() for p in (REPO / "migrations").glob("*.sql")}
    with zipfile.ZipFile(wheel) as archive:
        shipped = {n.removeprefix(PREFIX): archive.read(n) for n in archive.namelist() if n.startswith(PREFIX)}

    assert sources
    assert shipped == sources


@pytest.mark.slow
async def test_installed_wheel_applies_its_migrations(wheel: Path, tmp_path: Path, empty_database_url: str) -> None:
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin/python"
    _run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", wheel, cwd=tmp_path)
    (site,) = (venv / "lib").glob("python3*/site-packages")
    (site / "runtime-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = gateway_env({"GATEWAY_DATABASE_URL": empty_database_url, "GATEWAY_DATA_DIR": str(tmp_path / "data")})
    env.pop("PYTHONPATH")  # the checkout must not be importable

    where = _run(python, "-c", "import gateway; print(gateway.__file__)", cwd=tmp_path, env=env)
    assert Path(where.strip()).is_relative_to(site)
    assert "migrations applied" in _run(venv / "bin/gateway", "migrate", cwd=tmp_path, env=env)

    conn = await asyncpg.connect(empty_database_url)
    try:
        rows = await conn.fetch("SELECT name, checksum FROM schema_migrations ORDER BY name")
    finally:
        await conn.close()
    expected = [
        (p.name, hashlib.sha256(p.read_text(encoding="utf-8").encode()).hexdigest())
        for p in sorted((REPO / "migrations").glob("*.sql"))
    ]
    assert [(r["name"], r["checksum"]) for r in rows] == expected
