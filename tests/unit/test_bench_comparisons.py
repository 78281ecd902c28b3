"""bench/gateway.py's comparisons of several gateways: who runs when, and which source trees it accepts."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench.gateway import ROOT, CpuMeter, Variant, round_orders, trees, variant_settings


def _variants(*labels: str) -> list[Variant]:
    return [Variant(label, f"http://127.0.0.1:{8000 + i}", CpuMeter()) for i, label in enumerate(labels)]


def test_each_round_starts_one_gateway_later_so_every_gateway_runs_first_equally_often() -> None:
    variants = _variants("a", "b", "c")

    orders = [[v.label for v in order] for order in round_orders(variants, 6)]

    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]] * 2
    assert all(sorted(order) == ["a", "b", "c"] for order in orders)


def test_trees_compares_this_checkout_first_then_each_given_tree(tmp_path: Path) -> None:
    other = tmp_path / "base"
    (other / "gateway").mkdir(parents=True)
    (other / "gateway" / "cli.py").write_text("")

    assert trees(str(other)) == [ROOT, other.resolve()]
    setups = variant_settings(argparse.Namespace(transports=None, tracing=False, trees=str(other)))
    assert [(s.label, s.tree) for s in setups] == [(ROOT.name, ROOT), ("base", other.resolve())]


def test_a_folder_that_is_not_a_checkout_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="is not a checkout of this project"):
        trees(str(tmp_path))
