"""Buying a bundle: one debit, `token_count` tokens at the rounded-down share, and no way to refund more than paid."""
from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from tests.money.helpers import balance, ledger, token_path, tokens
from zenzefi_backend import clock
from zenzefi_backend.audit.models import AuditLog
from zenzefi_backend.extensions import db
from zenzefi_backend.notifications.models import OutboxEvent
from zenzefi_backend.tokens.models import AccessToken

from .helpers import DEFAULTS, bundle_path, buy, create, purchase_path


def funded(accounts, amount: str) -> dict:
    user = accounts.signed_in()
    accounts.fund(user["id"], amount)
    return user


def revoke_all(client, user, issued: list[dict]) -> Decimal:
    refunds = Decimal("0.00")
    for token in issued:
        response = client.delete(token_path(token["id"]), headers=user["headers"])
        assert response.status_code == 200, response.get_json()
        refunds += Decimal(response.get_json()["refund_amount"])
    return refunds


def test_purchase_issues_every_token_with_its_secret_once(app, client, catalogue, accounts):
    user = funded(accounts, "100.00")
    starter = catalogue["Starter Pack"]
    response = buy(client, user, starter["id"])
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert {key: body[key] for key in ("bundle_id", "bundle_name", "tokens_generated", "cost_znc", "new_balance")} \
        == {"bundle_id": starter["id"], "bundle_name": "Starter Pack", "tokens_generated": 5, "cost_znc": "81.00",
            "new_balance": "19.00"}
    issued = body["tokens"]
    assert len(issued) == 5 and len({token["token"] for token in issued}) == 5
    for token in issued:
        assert len(token["token"]) == 64 and token["token_hint"] == f"{token['token'][:6]}...{token['token'][-4:]}"
        assert (token["paid_znc"], token["duration_hours"], token["scope"]) == ("16.20", 24, "full")
        assert (token["source"], token["bundle_id"], token["status"]) == ("bundle", starter["id"], "ready")
        assert token["activated_at"] is None and token["expires_at"] is None
    listed = tokens(client, user)
    assert {token["id"] for token in listed} == {token["id"] for token in issued}
    assert all("token" not in token for token in listed)

    (purchase,) = ledger(client, user, "purchase")
    assert (purchase["amount"], purchase["balance_after"]) == ("-81.00", "19.00")
    assert (purchase["reference_type"], purchase["reference_id"]) == ("bundle", starter["id"])
    assert balance(client, user) == Decimal("19.00")
    with app.app_context():
        stored = db.session.scalars(sa.select(AccessToken).where(AccessToken.user_id == uuid.UUID(user["id"]))).all()
        assert {str(token.purchase_transaction_id) for token in stored} == {purchase["id"]}
        assert {token.token_hash for token in stored} == {hashlib.sha256(t["token"].encode()).hexdigest()
                                                          for t in issued}


@pytest.mark.parametrize("name", DEFAULTS)
def test_each_default_bundle_costs_its_total_and_refunds_at_most_that(client, catalogue, accounts, name):
    count, hours, _discount, _base, total, per_token = DEFAULTS[name]
    user = funded(accounts, total)
    body = buy(client, user, catalogue[name]["id"]).get_json()
    assert (body["cost_znc"], body["new_balance"], body["tokens_generated"]) == (total, "0.00", count)
    assert {(token["paid_znc"], token["duration_hours"]) for token in body["tokens"]} == {(per_token, hours)}
    refunds = revoke_all(client, user, body["tokens"])
    assert Decimal(total) - refunds >= 0
    assert refunds == Decimal(per_token) * count == Decimal(total)  # every default divides evenly
    assert balance(client, user) == Decimal(total)


def test_the_rounding_remainder_is_never_refunded(app, client, admin, accounts, monkeypatch):
    monkeypatch.setitem(app.config, "TOKEN_PRICE_1H", Decimal("1.25"))
    odd = create(client, admin, name="Odd", token_count=3, duration_hours=1, discount_percent=33).get_json()
    user = funded(accounts, "10.00")
    body = buy(client, user, odd["id"]).get_json()
    assert (body["cost_znc"], body["new_balance"]) == ("2.51", "7.49")
    assert [token["paid_znc"] for token in body["tokens"]] == ["0.83"] * 3
    assert revoke_all(client, user, body["tokens"]) == Decimal("2.49")
    assert balance(client, user) == Decimal("9.98")


def test_a_used_bundle_token_refunds_its_unused_share(app, client, catalogue, accounts):
    user = funded(accounts, "850.00")
    first = buy(client, user, catalogue["Developer Pack"]["id"]).get_json()["tokens"][0]
    with app.app_context():
        moment = clock.now()
        db.session.execute(sa.update(AccessToken).where(AccessToken.id == uuid.UUID(first["id"]))
                           .values(activated_at=moment, expires_at=moment + timedelta(hours=168)))
        db.session.commit()
    with clock.travel(timedelta(hours=84)):
        refund = client.delete(token_path(first["id"]), headers=user["headers"]).get_json()["refund_amount"]
    assert Decimal(refund) <= Decimal("42.50")  # half of 85.00, less the moment that passed
    assert Decimal(refund) >= Decimal("42.49")


def test_insufficient_balance_is_402_and_changes_nothing(app, client, catalogue, accounts):
    user = funded(accounts, "80.99")
    response = buy(client, user, catalogue["Starter Pack"]["id"])
    assert response.status_code == 402
    body = response.get_json()
    assert (body["code"], body["required"], body["available"]) == (402, "81.00", "80.99")
    assert balance(client, user) == Decimal("80.99")
    assert tokens(client, user) == [] and ledger(client, user, "purchase") == []
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(OutboxEvent)) == 0


def test_unknown_or_deactivated_bundle_is_404(client, catalogue, admin, accounts):
    user = funded(accounts, "100.00")
    assert buy(client, user, str(uuid.uuid4())).status_code == 404
    starter = catalogue["Starter Pack"]
    client.delete(bundle_path(starter["id"]), headers=admin["headers"])
    gone = buy(client, user, starter["id"])
    assert gone.status_code == 404 and gone.get_json()["message"] == "Bundle not found."
    assert balance(client, user) == Decimal("100.00")


def test_purchase_needs_a_jwt_and_takes_no_fields(client, catalogue, accounts):
    starter = catalogue["Starter Pack"]
    assert client.post(purchase_path(starter["id"])).status_code == 401
    user = funded(accounts, "200.00")
    for body in ({"price": "0.01"}, {"token_count": 50}, {"user_id": str(uuid.uuid4())}):
        response = client.post(purchase_path(starter["id"]), json=body, headers=user["headers"])
        assert response.status_code == 422 and set(response.get_json()["errors"]) == set(body)
    assert client.post(purchase_path(starter["id"]), json={}, headers=user["headers"]).status_code == 201
    assert balance(client, user) == Decimal("119.00")


def test_idempotency_key_replays_the_first_purchase(client, catalogue, accounts):
    user = funded(accounts, "200.00")
    starter, developer = catalogue["Starter Pack"], catalogue["Developer Pack"]
    key = {"Idempotency-Key": "bundle-once"}
    first = buy(client, user, starter["id"], key)
    replay = buy(client, user, starter["id"], key)
    assert first.status_code == replay.status_code == 201
    assert replay.get_json() == first.get_json() and replay.headers["Idempotent-Replayed"] == "true"
    assert balance(client, user) == Decimal("119.00") and len(tokens(client, user)) == 5
    assert buy(client, user, developer["id"], key).status_code == 422
    short = buy(client, user, developer["id"], {"Idempotency-Key": "too-poor"})
    assert short.status_code == 402
    assert buy(client, user, developer["id"], {"Idempotency-Key": "too-poor"}).get_json() == short.get_json()


def test_purchase_writes_events_and_audit(app, client, catalogue, accounts):
    user = funded(accounts, "90.00")
    starter = catalogue["Starter Pack"]
    body = buy(client, user, starter["id"]).get_json()
    with app.app_context():
        events = db.session.scalars(sa.select(OutboxEvent).where(OutboxEvent.user_id == uuid.UUID(user["id"]))).all()
        purchased = [e.payload for e in events if e.event_type == "token.purchased"]
        assert {p["token_id"] for p in purchased} == {token["id"] for token in body["tokens"]}
        assert {(p["source"], p["bundle_id"], p["paid_znc"]) for p in purchased} == {("bundle", starter["id"], "16.20")}
        assert [e.payload for e in events if e.event_type == "balance.low"] == [{"balance": "9.00"}]
        audit = db.session.scalar(sa.select(AuditLog).where(AuditLog.action == "bundle.purchased"))
        assert (str(audit.actor_id), audit.resource_id) == (user["id"], starter["id"])
        assert audit.details["cost_znc"] == "81.00" and audit.details["token_count"] == 5
