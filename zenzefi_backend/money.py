"""Decimal helpers: the only place where money is parsed, rounded or formatted."""
from __future__ import annotations

from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal, InvalidOperation

CENT = Decimal("0.01")
MAX_AMOUNT = Decimal("1000000.00")


class InvalidAmount(ValueError):
    """The input is not an acceptable money amount."""


def parse_amount(value: object, *, allow_negative: bool = False) -> Decimal:
    """Parse client input: a string or number, at most 2 decimals, 0 < |x| ≤ 1,000,000.00."""
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise InvalidAmount("Must be a number or a numeric string.")
    if isinstance(value, float):
        # repr() gives the shortest string that round-trips, so 0.1 stays "0.1".
        value = repr(value)
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise InvalidAmount("Not a valid amount.") from None
    if not amount.is_finite():
        raise InvalidAmount("Not a valid amount.")
    if amount == 0 or (amount < 0 and not allow_negative):
        raise InvalidAmount("Must be greater than 0." if not allow_negative else "Must not be 0.")
    # Magnitude first: quantizing 1E+999999999 would overflow the decimal context.
    if amount.copy_abs() > MAX_AMOUNT:
        raise InvalidAmount(f"Must be at most {MAX_AMOUNT}.")
    if amount != amount.quantize(CENT, rounding=ROUND_DOWN):
        raise InvalidAmount("At most 2 decimal places.")
    return amount.quantize(CENT)


def quantize(amount: Decimal) -> Decimal:
    """Exact values (prices, sums) to cents, half-even."""
    return amount.quantize(CENT, rounding=ROUND_HALF_EVEN)


def round_down(amount: Decimal) -> Decimal:
    """Refunds, shares and clawbacks: never round in the customer's or referrer's favour."""
    return amount.quantize(CENT, rounding=ROUND_DOWN)


def format_amount(amount: Decimal) -> str:
    return str(Decimal(amount).quantize(CENT, rounding=ROUND_HALF_EVEN))
