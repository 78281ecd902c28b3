"""`gateway generate` as a user runs it: a subprocess against a live gateway on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from PIL import Image

from tests.conftest import Gateway
from tests.e2e.test_generation_billing import audit_clean, balance
from tests.fakes.images import png

ROOT = Path(__file__).resolve().parents[2]


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "generate",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_generate_saves_the_image_and_shows_progress(gateway: Gateway, live_gateway: str, tmp_path: Path) -> None:
    _, key = await gateway.tenant(credits=10)
    target = tmp_path / "lighthouse.png"
    code, out, err = await run_cli(
        "a lighthouse at dusk",
        "--out",
        str(target),
        "--width",
        "256",
        "--height",
        "256",
        env={"GATEWAY_URL": live_gateway, "GATEWAY_API_KEY": key},
    )
    assert code == 0, err
    assert out.strip() == str(target)
    with Image.open(target) as image:
        assert (image.format, image.size) == ("PNG", (256, 256))
    assert "[##############################] 100% succeeded" in err
    assert "charged 0.4 credits" in err
    assert (await balance(gateway, key))["balance"] == 9.6
    await audit_clean(gateway)


async def test_generate_several_images_with_options_and_a_password(
    gateway: Gateway, live_gateway: str, tmp_path: Path
) -> None:
    _, key = await gateway.tenant(credits=10)
    code, out, err = await run_cli(
        "two boats",
        "--out",
        str(tmp_path / "boat.jpg"),
        "--n",
        "2",
        "--output-format",
        "jpeg",
        "--password",
        "hunter2",
        "--url",
        live_gateway,
        "--key",
        key,
        env={},
    )
    assert code == 0, err
    written = [Path(line) for line in out.split()]
    assert written == [tmp_path / "boat-0.jpg", tmp_path / "boat-1.jpg"]
    assert [p.read_bytes()[:2] for p in written] == [b"\xff\xd8", b"\xff\xd8"]
    await audit_clean(gateway)


async def test_generate_image_to_image_uploads_the_file(gateway: Gateway, live_gateway: str, tmp_path: Path) -> None:
    _, key = await gateway.tenant(credits=10)
    source = tmp_path / "in.png"
    source.write_bytes(png(512, 512))
    code, _, err = await run_cli(
        "the same in winter",
        "--op",
        "image-to-image",
        "--image",
        str(source),
        "--strength",
        "0.4",
        "--out",
        str(tmp_path / "winter.png"),
        env={"GATEWAY_URL": live_gateway, "GATEWAY_API_KEY": key},
    )
    assert code == 0, err
    assert (tmp_path / "winter.png").read_bytes().startswith(b"\x89PNG")
    await audit_clean(gateway)


async def test_generate_reports_refusals_and_failures_with_a_nonzero_exit(
    gateway: Gateway, live_gateway: str, tmp_path: Path
) -> None:
    _, key = await gateway.tenant(credits=10)
    env = {"GATEWAY_URL": live_gateway, "GATEWAY_API_KEY": key}
    target = tmp_path / "never.png"

    code, _, err = await run_cli("x", "--out", str(target), "--n", "9", env=env)
    assert code == 1
    assert "HTTP 422" in err
    assert "n:" in err

    code, _, err = await run_cli("x", "--out", str(target), env={**env, "GATEWAY_API_KEY": "gw_wrong"})
    assert code == 1
    assert "HTTP 401" in err

    gateway.extra["a2c"].fail_with_status(500)
    gateway.extra["qolaba"].fail_with_status(500)
    code, _, err = await run_cli("x", "--out", str(target), env=env)
    assert code == 1
    assert "failed" in err
    assert not target.exists()
    assert (await balance(gateway, key))["balance"] == 10
    await audit_clean(gateway)
