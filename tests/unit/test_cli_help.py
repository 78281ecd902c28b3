"""`gateway --help` lists every command with a line, and so does each command with sub-commands."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from gateway.cli import build_parser, main


def commands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, tuple[str, argparse.ArgumentParser]]:
    """Every (sub-)command's full name, its one-line help and its parser."""
    found: dict[str, tuple[str, argparse.ArgumentParser]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                found[f"{prefix}{name}"] = (helps.get(name, ""), sub)
                found.update(commands(sub, f"{prefix}{name} "))
    return found


def test_every_command_and_sub_command_has_a_help_line() -> None:
    found = commands(build_parser())
    for name in ("serve", "doctor", "tenants", "tenants create", "keys create", "admin-keys revoke", "gpu-worker"):
        assert name in found
    assert [name for name, (line, _) in found.items() if not line.strip()] == []
    top = build_parser().format_help()
    for name in ("tenants", "keys", "admin-keys", "billing", "gpu", "doctor"):
        assert f"    {name}" in top


def test_every_option_says_what_it_does() -> None:
    for name, (_, parser) in commands(build_parser()).items():
        for action in parser._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                assert action.help, f"gateway {name} {action.option_strings[0]} has no help"


def test_gpu_worker_help_names_the_secret_and_the_gpu_settings(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["gpu-worker", "--help"])
    text = capsys.readouterr().out
    for setting in ("gpu.secret_env", "api_key_env", "gpu.port", "gpu.model_path", "gpu.device"):
        assert setting in text


def test_serve_refuses_a_route_nothing_can_serve_before_starting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[engines.ait]\nkind = "aithriving"\nbase_url = "http://127.0.0.1:9"\napi_key_env = "AIT_KEY"\n'
        '[routes]\n"text-to-image" = ["ait"]\n'
    )
    monkeypatch.setenv("GATEWAY_CONFIG", str(config))
    monkeypatch.setenv("AIT_KEY", "k")
    assert main(["serve"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("configuration error: routes.text-to-image: no engine listed (ait) can do text-to-image")
