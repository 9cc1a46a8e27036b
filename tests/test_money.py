from __future__ import annotations

from decimal import Decimal

import pytest

from zenzefi_backend.money import InvalidAmount, format_amount, parse_amount, quantize, round_down
from zenzefi_backend.openapi.jsonbody import loads


@pytest.mark.parametrize(
    "raw, expected",
    [("81", "81.00"), (81, "81.00"), ("0.01", "0.01"), (0.1, "0.10"), ("1000000.00", "1000000.00"),
     ("12.5", "12.50"), ("007.50", "7.50"), (Decimal("18.00"), "18.00")],
)
def test_accepted_amounts(raw, expected):
    assert format_amount(parse_amount(raw)) == expected


@pytest.mark.parametrize(
    "raw",
    [-1, 0, "0", "0.001", "NaN", "Infinity", "1e309", 1e309, 10**12, "abc", "", None, True, [], {}, "1000000.01",
     "1E+999999999", "9" * 100, "1e-999999999", "-0", " 12.5 ", "1.230", "+5", "5.", ".5", "1e2", "1E2", "５",
     "٥", "１０.00", "𝟓", "1_000", "5\u00a0", "0x10", Decimal("1E+2"), 1e20],
)
def test_rejected_amounts(raw):
    with pytest.raises(InvalidAmount):
        parse_amount(raw)


@pytest.mark.parametrize("raw", ["1e2", "1E2", "1.0e2", "5.000", "-5", "1e-2"])
def test_json_numbers_are_judged_by_how_they_were_written(raw):
    with pytest.raises(InvalidAmount):
        parse_amount(loads(raw))


@pytest.mark.parametrize("raw, expected", [("5", "5.00"), ("5.5", "5.50"), ("5.00", "5.00"), ("0.1", "0.10")])
def test_json_numbers_written_as_money_are_accepted(raw, expected):
    assert format_amount(parse_amount(loads(raw))) == expected


def test_an_integer_too_long_to_print_is_refused_cleanly():
    with pytest.raises(InvalidAmount):
        parse_amount(10**5000)


def test_signed_amounts_for_adjustments():
    assert parse_amount("-5.5", allow_negative=True) == Decimal("-5.50")
    with pytest.raises(InvalidAmount):
        parse_amount("0", allow_negative=True)


def test_rounding_rules():
    assert quantize(Decimal("0.125")) == Decimal("0.12")
    assert quantize(Decimal("0.135")) == Decimal("0.14")
    assert round_down(Decimal("16.199")) == Decimal("16.19")
    assert round_down(Decimal("-0.001")) == Decimal("0.00")
