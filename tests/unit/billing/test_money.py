"""Millicredits to and from the credits the API shows."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest

from gateway.domain.money import MILLI, from_credits, to_credits


def test_to_credits_is_the_float_nearest_the_exact_amount() -> None:
    rng = random.Random(7)
    amounts = [0, 1, -1, 999, 1234, 10**15 + 1, -(10**18) - 7, 2**63 - 1, 10**30 + 3]
    amounts += [rng.randrange(-(10**18), 10**18) for _ in range(20_000)]
    for amount in amounts:
        assert to_credits(amount) == float(Decimal(amount) / MILLI), amount


@pytest.mark.parametrize("millicredits", [0, 1, 5, 400, 1234, 99_999_999_999])
def test_credits_shown_read_back_as_the_same_millicredits(millicredits: int) -> None:
    assert from_credits(to_credits(millicredits)) == millicredits


def test_more_than_three_decimals_are_refused_not_rounded() -> None:
    with pytest.raises(ValueError, match="3 decimals"):
        from_credits(1.2345)
