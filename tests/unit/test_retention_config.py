"""The `[retention]` settings and the `gateway retention run` command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import build_parser, cmd_retention_run
from gateway.config import ConfigError, load_settings


def settings_from(tmp_path: Path, toml: str) -> object:
    path = tmp_path / "gateway.toml"
    path.write_text(toml)
    return load_settings({}, config_path=path)


def test_retention_defaults_keep_jobs_90_days_and_sweep_every_five_minutes() -> None:
    retention = load_settings({}).retention

    assert retention.enabled is True
    assert retention.jobs_days == 90
    assert retention.webhook_days == 7
    assert retention.interval_s == 300.0
    assert retention.batch_size == 500


def test_retention_section_reads_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text("[retention]\njobs_days = 40\nbatch_size = 100\nenabled = false\n")

    retention = load_settings({}, config_path=path).retention

    assert (retention.jobs_days, retention.batch_size, retention.enabled) == (40, 100, False)


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("jobs_days = 31", "jobs_days"),
        ("batch_size = 100000", "batch_size"),
        ("keep_forever = true", "keep_forever"),
    ],
    ids=["less-than-a-month-of-jobs", "huge-batch", "unknown-field"],
)
def test_retention_section_refuses_bad_values_naming_the_field(tmp_path: Path, line: str, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        settings_from(tmp_path, f"[retention]\n{line}\n")


def test_retention_run_takes_dry_run_and_json() -> None:
    args = build_parser().parse_args(["retention", "run", "--dry-run", "--json"])

    assert args.fn is cmd_retention_run
    assert (args.dry_run, args.json) == (True, True)
    assert build_parser().parse_args(["retention", "run"]).dry_run is False
