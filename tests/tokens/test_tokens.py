from __future__ import annotations

import hashlib
import uuid

import pytest
import sqlalchemy as sa

from zenzefi_backend.extensions import db
from zenzefi_backend.notifications.models import OutboxEvent
from zenzefi_backend.tokens.models import AccessToken

PRICES = {1: "1.00", 12: "10.00", 24: "18.00", 168: "100.00", 720: "300.00"}


@pytest.fixture
def buyer(accounts):
    return accounts.funded("1000.00")


def buy(client, user, **body):
    return client.post("/api/v1/tokens/purchase", headers=user["headers"], json={"duration_hours": 24, **body})


def test_prices_are_the_spec_defaults(client):
    body = client.get("/api/v1/tokens/prices").get_json()
    assert {item["duration_hours"]: item["price_znc"] for item in body["items"]} == PRICES
    converted = client.get("/api/v1/tokens/prices?currency=RUB").get_json()["items"]
    assert converted[2] == {"duration_hours": 24, "price_znc": "18.00", "currency": "RUB", "price": "180.00"}
    assert client.get("/api/v1/tokens/prices?currency=XYZ").status_code == 422


def test_rates(client):
    assert client.get("/api/v1/currency/rates").get_json() == {
        "base": "ZNC", "rates": {"RUB": "10.00", "USD": "0.11", "EUR": "0.10"}}


@pytest.mark.parametrize("hours, price", PRICES.items())
def test_purchase_debits_the_price_and_shows_the_secret_once(app, client, buyer, hours, price):
    response = buy(client, buyer, duration_hours=hours, scope="certificates_only")
    assert response.status_code == 201
    token = response.get_json()
    assert token["paid_znc"] == price and token["duration_hours"] == hours
    assert token["scope"] == "certificates_only" and token["status"] == "ready" and token["source"] == "purchase"
    assert token["activated_at"] is None and token["expires_at"] is None and token["bundle_id"] is None
    secret = token["token"]
    assert len(secret) == 64 and all(c.isalnum() or c in "-_" for c in secret)
    assert token["token_hint"] == f"{secret[:6]}...{secret[-4:]}"
    with app.app_context():
        stored = db.session.get(AccessToken, uuid.UUID(token["id"]))
        assert stored.token_hash == hashlib.sha256(secret.encode()).hexdigest()
        columns = [getattr(stored, c.key) for c in sa.inspect(AccessToken).columns]
        assert secret not in [str(value) for value in columns]
    again = client.get(f"/api/v1/tokens/{token['id']}", headers=buyer["headers"]).get_json()
    assert "token" not in again and again["token_hint"] == token["token_hint"]
    balance = client.get("/api/v1/currency/balance", headers=buyer["headers"]).get_json()
    expected = f"{1000 - float(price):.2f}"
    assert balance == {"balance": expected, "currency": "ZNC"}
    ledger = client.get("/api/v1/currency/transactions", headers=buyer["headers"]).get_json()
    purchase = ledger["items"][0]
    assert purchase["transaction_type"] == "purchase" and purchase["amount"] == f"-{price}"
    assert purchase["balance_after"] == expected
    assert purchase["reference_type"] == "access_token" and purchase["reference_id"] == token["id"]


def test_scope_defaults_to_full(client, buyer):
    assert buy(client, buyer).get_json()["scope"] == "full"


def test_insufficient_balance_is_402_with_required_and_available_and_changes_nothing(app, client, accounts):
    user = accounts.signed_in()
    accounts.fund(user["id"], "17.99")
    response = buy(client, user)
    assert response.status_code == 402
    body = response.get_json()
    assert body["code"] == 402 and body["required"] == "18.00" and body["available"] == "17.99"
    assert client.get("/api/v1/currency/balance", headers=user["headers"]).get_json()["balance"] == "17.99"
    assert client.get("/api/v1/tokens/my-tokens?active_only=false", headers=user["headers"]).get_json()["total"] == 0
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(OutboxEvent)) == 0


def test_purchase_writes_events_and_audit(app, client, accounts):
    user = accounts.signed_in()
    accounts.fund(user["id"], "20.00")
    token = buy(client, user).get_json()
    with app.app_context():
        events = {e.event_type: e.payload for e in db.session.scalars(sa.select(OutboxEvent))}
        assert events["token.purchased"]["token_id"] == token["id"]
        assert events["balance.low"] == {"balance": "2.00"}
        from zenzefi_backend.audit.models import AuditLog

        assert db.session.scalar(sa.select(AuditLog).where(AuditLog.action == "token.purchased")) is not None


def test_balance_low_only_when_crossing_below_ten(app, client, accounts):
    user = accounts.signed_in()
    accounts.fund(user["id"], "9.00")
    buy(client, user, duration_hours=1)
    with app.app_context():
        assert db.session.scalar(sa.select(OutboxEvent).where(OutboxEvent.event_type == "balance.low")) is None


def test_my_tokens_lists_own_tokens_newest_first_without_secrets(client, buyer, accounts):
    ids = [buy(client, buyer, duration_hours=1).get_json()["id"] for _ in range(3)]
    other = accounts.signed_in()
    accounts.fund(other["id"], "5")
    buy(client, other, duration_hours=1)
    page = client.get("/api/v1/tokens/my-tokens", headers=buyer["headers"]).get_json()
    assert page["total"] == 3 and page["limit"] == 50 and page["offset"] == 0
    assert [item["id"] for item in page["items"]] == ids[::-1]
    assert all("token" not in item for item in page["items"])
    second = client.get("/api/v1/tokens/my-tokens?limit=1&offset=1", headers=buyer["headers"]).get_json()
    assert [item["id"] for item in second["items"]] == [ids[1]] and second["total"] == 3


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "offset=-1", "offset=363502585583011233792",
                                   "limit=abc", "active_only=maybe"])
def test_list_parameters_out_of_range_are_422(client, buyer, query):
    assert client.get(f"/api/v1/tokens/my-tokens?{query}", headers=buyer["headers"]).status_code == 422


def test_active_only_hides_revoked_tokens(client, buyer):
    kept = buy(client, buyer).get_json()["id"]
    gone = buy(client, buyer).get_json()["id"]
    client.delete(f"/api/v1/tokens/{gone}", headers=buyer["headers"])
    active = client.get("/api/v1/tokens/my-tokens", headers=buyer["headers"]).get_json()
    assert [item["id"] for item in active["items"]] == [kept]
    everything = client.get("/api/v1/tokens/my-tokens?active_only=false", headers=buyer["headers"]).get_json()
    assert {item["id"]: item["status"] for item in everything["items"]} == {kept: "ready", gone: "revoked"}


def test_other_users_tokens_are_404(client, buyer, accounts):
    token = buy(client, buyer).get_json()
    intruder = accounts.signed_in()
    assert client.get(f"/api/v1/tokens/{token['id']}", headers=intruder["headers"]).status_code == 404
    assert client.delete(f"/api/v1/tokens/{token['id']}", headers=intruder["headers"]).status_code == 404
    assert client.get(f"/api/v1/tokens/{token['id']}", headers=buyer["headers"]).get_json()["status"] == "ready"
    assert client.get(f"/api/v1/tokens/{uuid.uuid4()}", headers=buyer["headers"]).status_code == 404


def test_revoke_of_an_unused_token_refunds_everything(app, client, buyer):
    token = buy(client, buyer).get_json()
    response = client.delete(f"/api/v1/tokens/{token['id']}", headers=buyer["headers"])
    assert response.status_code == 200
    assert response.get_json() == {"revoked": True, "refund_amount": "18.00", "new_balance": "1000.00",
                                   "message": "Token revoked; 18.00 ZNC refunded."}
    refund = client.get("/api/v1/currency/transactions?transaction_type=refund",
                        headers=buyer["headers"]).get_json()["items"]
    assert [(r["amount"], r["reference_id"]) for r in refund] == [("18.00", token["id"])]
    assert client.delete(f"/api/v1/tokens/{token['id']}", headers=buyer["headers"]).status_code == 404
    with app.app_context():
        assert db.session.scalar(sa.select(OutboxEvent).where(OutboxEvent.event_type == "token.revoked"))


def test_every_route_needs_a_jwt(client):
    token_id = uuid.uuid4()
    for method, path in [("post", "/api/v1/tokens/purchase"), ("get", "/api/v1/tokens/my-tokens"),
                         ("get", f"/api/v1/tokens/{token_id}"), ("delete", f"/api/v1/tokens/{token_id}"),
                         ("get", "/api/v1/currency/balance"), ("get", "/api/v1/currency/transactions")]:
        assert getattr(client, method)(path).status_code == 401, path
