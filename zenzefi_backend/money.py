"""Decimal helpers: the only place where money is parsed, rounded or formatted."""
from __future__ import annotations

import re
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal

import sqlalchemy as sa

CENT = Decimal("0.01")
MAX_AMOUNT = Decimal("1000000.00")


# The only accepted way to write an amount: ASCII digits, an optional point followed by one or two digits,
# optionally signed with "-" (where negative amounts are allowed). No exponent, no "+", no spaces, no other
# scripts' digits ("５", "٥"), no bare "5." or ".5".
AMOUNT_PATTERN = r"-?[0-9]+(\.[0-9]{1,2})?"
_AMOUNT = re.compile(AMOUNT_PATTERN)
FORMAT_HINT = 'Must be written with the digits 0-9 and at most two decimals after a ".", e.g. "81.00".'


class InvalidAmount(ValueError):
    """The input is not an acceptable money amount."""


class JsonFloat(float):
    """A JSON number with a fraction or exponent, as a float that keeps its source text (the body decoder,
    `openapi.jsonbody`, makes them), so `parse_amount` sees how the client wrote it."""

    text: str

    def __new__(cls, text: str) -> JsonFloat:
        number = super().__new__(cls, text)
        number.text = text
        return number


def _written_form(value: object) -> str:
    """How the client wrote the amount: a JSON number keeps its source text (`JsonFloat`)."""
    if isinstance(value, JsonFloat):
        return value.text
    if isinstance(value, float):
        return repr(value)  # the shortest string that round-trips, so 0.1 stays "0.1"
    return str(value)


def parse_amount(value: object, *, allow_negative: bool = False) -> Decimal:
    """Parse client input: a string or JSON number of the form AMOUNT_PATTERN, 0 < |x| ≤ 1,000,000.00."""
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise InvalidAmount("Must be a number or a numeric string.")
    try:
        written = _written_form(value)
    except ValueError:  # an int too long to print (over 4300 digits)
        raise InvalidAmount(f"Must be at most {MAX_AMOUNT}.") from None
    if _AMOUNT.fullmatch(written) is None:
        raise InvalidAmount(FORMAT_HINT)
    amount = Decimal(written)
    if amount == 0 or (amount < 0 and not allow_negative):
        raise InvalidAmount("Must be greater than 0." if not allow_negative else "Must not be 0.")
    if amount.copy_abs() > MAX_AMOUNT:
        raise InvalidAmount(f"Must be at most {MAX_AMOUNT}.")
    return amount.quantize(CENT)


def quantize(amount: Decimal) -> Decimal:
    """Exact values (prices, sums) to cents, half-even."""
    return amount.quantize(CENT, rounding=ROUND_HALF_EVEN)


def quantized_in_sql(expression: sa.ColumnElement[Decimal]) -> sa.ColumnElement[Decimal]:
    """An SQL sum of amounts back to cents: ROUND keeps SQLite (which stores NUMERIC as REAL) exact to the cent;
    PostgreSQL numeric is exact anyway, so a sum of cents needs no tie-breaking there."""
    return sa.func.round(expression, 2)


def round_down(amount: Decimal) -> Decimal:
    """Refunds, shares and clawbacks: never round in the customer's or referrer's favour."""
    return amount.quantize(CENT, rounding=ROUND_DOWN)


def has_at_most_decimals(amount: Decimal, decimals: int) -> bool:
    """Whether `amount` is exact in a currency with `decimals` places (JPY has none, USD two)."""
    return amount == amount.quantize(Decimal(1).scaleb(-decimals))


def format_amount(amount: Decimal) -> str:
    return str(Decimal(amount).quantize(CENT, rounding=ROUND_HALF_EVEN))
