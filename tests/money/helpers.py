"""Money-test helpers: every read and write goes through the public API, as a client would see it."""
from __future__ import annotations

from decimal import Decimal
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from zenzefi_backend.tokens.pricing import PRICE_SETTINGS

PURCHASE = "/api/v1/tokens/purchase"
BALANCE = "/api/v1/currency/balance"
TRANSACTIONS = "/api/v1/currency/transactions"
MY_TOKENS = "/api/v1/tokens/my-tokens"
VERIFY = "/api/v1/admin/ledger/verify"
CENT = Decimal("0.01")


def adjustments_path(user_id: str) -> str:
    return f"/api/v1/admin/users/{user_id}/balance-adjustments"


def token_path(token_id: str) -> str:
    return f"/api/v1/tokens/{token_id}"


def prices(app: Flask) -> dict[int, Decimal]:
    """The configured price of every duration, as the service will charge it."""
    return {hours: Decimal(str(app.config[setting])).quantize(CENT) for hours, setting in PRICE_SETTINGS.items()}


def money(value: Decimal | int | str) -> str:
    return str(Decimal(value).quantize(CENT))


def adjust(client: FlaskClient, admin: dict, user_id: str, amount: Decimal | str, reason: str = "test",
           headers: dict[str, str] | None = None):
    return client.post(adjustments_path(user_id), json={"amount": str(amount), "reason": reason},
                       headers={**admin["headers"], **(headers or {})})


def fund(client: FlaskClient, admin: dict, user: dict, amount: Decimal | str) -> None:
    response = adjust(client, admin, user["id"], amount, reason="top-up")
    assert response.status_code == 201, response.get_json()


def balance(client: FlaskClient, user: dict) -> Decimal:
    response = client.get(BALANCE, headers=user["headers"])
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["currency"] == "ZNC"
    assert isinstance(body["balance"], str), body
    return Decimal(body["balance"])


def ledger(client: FlaskClient, user: dict, transaction_type: str | None = None) -> list[dict[str, Any]]:
    """The user's whole ledger, newest first, read page by page."""
    rows: list[dict[str, Any]] = []
    while True:
        query = f"?limit=100&offset={len(rows)}" + (f"&transaction_type={transaction_type}" if transaction_type else "")
        response = client.get(TRANSACTIONS + query, headers=user["headers"])
        assert response.status_code == 200, response.get_json()
        page = response.get_json()
        rows.extend(page["items"])
        if not page["items"] or len(rows) >= page["total"]:
            assert len(rows) == page["total"], page
            return rows


def ledger_sum(rows: list[dict[str, Any]]) -> Decimal:
    return sum((Decimal(row["amount"]) for row in rows), Decimal("0.00"))


def assert_chained(rows: list[dict[str, Any]]) -> None:
    """Read newest first, each entry starts from the balance the one before it left (no lost update)."""
    for newer, older in zip(rows, rows[1:], strict=False):
        assert Decimal(newer["balance_after"]) - Decimal(newer["amount"]) == Decimal(older["balance_after"]), \
            (older, newer)
    if rows:
        assert rows[-1]["balance_after"] == rows[-1]["amount"], rows[-1]


def tokens(client: FlaskClient, user: dict, active_only: bool = False) -> list[dict[str, Any]]:
    response = client.get(f"{MY_TOKENS}?limit=100&active_only={'true' if active_only else 'false'}",
                          headers=user["headers"])
    assert response.status_code == 200, response.get_json()
    page = response.get_json()
    assert page["total"] == len(page["items"]), "helper reads one page; keep tests under 100 tokens per user"
    return page["items"]


def assert_ledger_verifies(client: FlaskClient, admin: dict) -> None:
    response = client.get(VERIFY, headers=admin["headers"])
    assert response.status_code == 200, response.get_json()
    report = response.get_json()
    assert report["ok"] is True and report["mismatches"] == [], report
