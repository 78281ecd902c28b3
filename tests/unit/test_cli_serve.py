"""`gateway serve`'s flags (the processes themselves are tested in tests/e2e/test_serve_processes.py)."""

from __future__ import annotations

import pytest

from gateway.cli import build_parser


def test_serve_runs_one_process_unless_told_otherwise() -> None:
    assert build_parser().parse_args(["serve"]).workers == 1
    assert build_parser().parse_args(["serve", "--workers", "4"]).workers == 4


@pytest.mark.parametrize("workers", ["0", "-2", "two"])
def test_serve_refuses_a_worker_count_below_one_naming_the_flag(
    workers: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["serve", "--workers", workers])
    assert exit_.value.code == 2
    assert "--workers" in capsys.readouterr().err
