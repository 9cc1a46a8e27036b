"""Token prices (configurable) and their conversion into payment currencies."""
from __future__ import annotations

from decimal import Decimal

from flask import current_app

from ..money import quantize

PRICE_SETTINGS = {1: "TOKEN_PRICE_1H", 12: "TOKEN_PRICE_12H", 24: "TOKEN_PRICE_24H", 168: "TOKEN_PRICE_7D",
                  720: "TOKEN_PRICE_30D"}
DURATIONS = tuple(PRICE_SETTINGS)
CURRENCIES = ("RUB", "USD", "EUR")


def price_for(duration_hours: int) -> Decimal:
    return quantize(Decimal(current_app.config[PRICE_SETTINGS[duration_hours]]))


def rate_for(currency: str) -> Decimal:
    return quantize(Decimal(current_app.config[f"ZNC_RATE_{currency}"]))


def rates() -> dict[str, Decimal]:
    return {currency: rate_for(currency) for currency in CURRENCIES}


def convert(amount_znc: Decimal, currency: str) -> Decimal:
    return quantize(amount_znc * rate_for(currency))


def price_list(currency: str | None = None) -> list[dict]:
    items = []
    for hours in DURATIONS:
        price = price_for(hours)
        item = {"duration_hours": hours, "price_znc": price}
        if currency:
            item.update(currency=currency, price=convert(price, currency))
        items.append(item)
    return items
