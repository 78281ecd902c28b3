"""Money and prices. Amounts are integer millicredits (1 credit = 1000); never floats."""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated

import msgspec

MILLI = 1000

Credits = Annotated[
    float,
    msgspec.Meta(description="Credits with up to 3 decimals (the ledger keeps integer millicredits)."),
]


def to_credits(millicredits: int) -> float:
    """For display in the API: 1234 -> 1.234, the float nearest to the exact amount.

    Python's `int / int` rounds the exact quotient once, so this equals `float(Decimal(m) / 1000)`
    at a fraction of its cost (the job view converts several amounts per request)."""
    return millicredits / MILLI


def from_credits(credits: float) -> int:
    """1.234 -> 1234. Refuses more than 3 decimals rather than rounding money silently."""
    exact = Decimal(str(credits)) * MILLI
    rounded = exact.quantize(Decimal(1), rounding=ROUND_HALF_UP)
    if rounded != exact:
        raise ValueError("amounts have at most 3 decimals")
    return int(rounded)


class PriceRule(msgspec.Struct, frozen=True, kw_only=True):
    """Credits per image for one operation (and optionally one model)."""

    operation: str
    model: str = ""
    base: int  # millicredits for an image up to ref_pixels at up to ref_steps
    ref_pixels: int = 512 * 512
    ref_steps: int = 30
    cap: int

    def unit_price(self, width: int, height: int, steps: int) -> int:
        """Grows linearly with pixel count and with steps beyond the reference, capped.

        Rounded up to a whole millicredit so a price is never below the formula."""
        factor = max(1.0, width * height / self.ref_pixels) * max(1.0, steps / self.ref_steps)
        return min(self.cap, max(self.base, math.ceil(self.base * factor)))


def pick_rule(rules: list[PriceRule], operation: str, model: str | None) -> PriceRule:
    """The model-specific rule when there is one, else the operation's default rule."""
    fallback = None
    for rule in rules:
        if rule.operation != operation:
            continue
        if model is not None and rule.model == model:
            return rule
        if rule.model == "":
            fallback = rule
    if fallback is None:
        raise LookupError(f"no price for {operation}")
    return fallback
