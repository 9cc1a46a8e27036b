"""Top-ups through YooKassa, end to end inside the app: our API → the official library → the local fake of the
YooKassa API, and YooKassa's notifications back into `POST /api/v1/webhooks/payment/yookassa`.

The test client presents YooKassa's address as the socket peer (`REMOTE_ADDR`); the e2e tests and
`test_behind_a_reverse_proxy_the_forwarded_address_is_the_one_checked` take it from X-Forwarded-For."""
from __future__ import annotations

import json
import uuid
from collections import Counter
from datetime import timedelta

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from tests.fixtures.fake_yookassa import YOOKASSA_NOTIFICATION_ADDRESS, FakeYooKassa
from tests.fixtures.race import race
from tests.support import app_config, postgres_only
from zenzefi_backend import clock
from zenzefi_backend.extensions import db
from zenzefi_backend.payments.models import Payment, PaymentWebhookEvent

from .helpers import (
    PURCHASE,
    assert_ledger_consistent,
    assert_untouched,
    audits,
    balance,
    count,
    create_payment,
    deposits,
    reconcile,
    status_of,
    top_up,
)

WEBHOOK = "/api/v1/webhooks/payment/yookassa"
PROVIDERS = "/api/v1/currency/providers"


@pytest.fixture
def shop(app, fake_yookassa, monkeypatch) -> FakeYooKassa:
    """The app takes payments through YooKassa (the fake) with the default notification networks."""
    for name, value in {"PAYMENT_PROVIDER": "yookassa", "MOCK_PAYMENTS_ENABLED": False,
                        **fake_yookassa.config()}.items():
        monkeypatch.setitem(app.config, name, value)
    return fake_yookassa


def notify(client: FlaskClient, shop: FakeYooKassa, their_id: str | None = None, event: str | None = None, *,
           body: dict | bytes | None = None, address: str = YOOKASSA_NOTIFICATION_ADDRESS):
    """Deliver a notification as YooKassa does, from `address`."""
    if body is None:
        body = shop.notification(their_id, event)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(WEBHOOK, data=raw, content_type="application/json", environ_base={"REMOTE_ADDR": address})


def rejections(app, reason: str) -> list:
    return [a for a in audits(app, "payment.webhook_rejected") if a.details["reason"] == reason]


# --- creation ------------------------------------------------------------------------------------------------------

def test_a_top_up_is_a_yookassa_payment_keyed_and_tagged_with_our_id(app, client, user, shop):
    created = top_up(client, user, amount_znc="100", return_url="https://app.example/paid")

    (sent,) = shop.api_requests("POST")
    assert sent.headers["idempotence-key"] == created["payment_id"]
    assert sent.body["metadata"]["payment_id"] == created["payment_id"]
    assert sent.body["amount"] == {"value": "1000.00", "currency": "RUB"}
    assert sent.body["confirmation"]["return_url"] == f"https://app.example/paid?payment_id={created['payment_id']}"
    their = shop.payment_for(created["payment_id"])
    assert created["payment_url"] == their["confirmation"]["confirmation_url"]
    assert (created["status"], created["amount"], created["currency"]) == ("pending", "1000.00", "RUB")
    with app.app_context():
        row = db.session.get(Payment, uuid.UUID(created["payment_id"]))
        assert (row.provider, row.provider_payment_id) == ("yookassa", their["id"])


def test_the_providers_endpoint_says_yookassa_takes_roubles_from_one(client, shop):
    response = client.get(PROVIDERS)
    assert response.status_code == 200
    body = response.get_json()
    assert (body["provider"], body["currencies"], body["minimums"]) == ("yookassa", ["RUB"], {"RUB": "1.00"})


@pytest.mark.parametrize(("body", "field"), [
    ({"amount_znc": "100", "currency": "USD"}, "amount_znc"),
    ({"amount_znc": "100", "currency": "EUR"}, "amount_znc"),
    ({"amount_znc": "0.09"}, "amount_znc"),  # 0.90 RUB, below YooKassa's 1.00
])
def test_what_yookassa_cannot_take_is_422_before_any_call(app, client, user, shop, body, field):
    response = client.post(PURCHASE, headers=user["headers"], json=body)
    assert response.status_code == 422, response.get_json()
    assert field in response.get_json()["errors"]
    assert shop.requests == []
    assert count(app, Payment) == 0


@pytest.mark.parametrize("outage", ["down", "500", "html 502"])
def test_yookassa_failing_at_creation_is_503_and_nothing_is_stored(app, client, user, shop, outage):
    if outage == "down":
        shop.stop()
    else:
        shop.fail(int(outage.split()[-1]), html="html" in outage)
    response = create_payment(client, user)
    assert response.status_code == 503, response.get_json()
    assert response.get_json()["message"] == "The payment provider is unavailable; try again shortly."
    assert count(app, Payment) == 0
    assert audits(app, "payment.created") == []
    if outage == "down":
        shop.start()
    else:
        shop.recover()
    assert create_payment(client, user).status_code == 201


# --- notifications ---------------------------------------------------------------------------------------------

def test_a_paid_notification_credits_once_and_a_replay_changes_nothing(app, client, user, shop):
    created = top_up(client, user)
    their_id = shop.payment_for(created["payment_id"])["id"]
    shop.succeed(their_id)
    shop.requests.clear()

    first = notify(client, shop, their_id)
    assert (first.status_code, first.get_json()) == (200, {"received": True, "processed": True})
    assert (shop.requests[0].method, shop.requests[0].path) == ("GET", f"/v3/payments/{their_id}")
    assert balance(client, user) == "100.00"
    assert status_of(client, user, created["payment_id"]) == "succeeded"
    (deposit,) = deposits(app, user["id"])
    assert str(deposit.reference_id) == created["payment_id"]
    (succeeded,) = audits(app, "payment.succeeded")
    assert succeeded.details["event_id"] == f"yookassa:{their_id}:succeeded"

    for _ in range(2):  # YooKassa repeats a notification it thinks was not received
        again = notify(client, shop, their_id)
        assert (again.status_code, again.get_json()) == (200, {"received": True, "processed": False})
    assert balance(client, user) == "100.00"
    assert len(deposits(app)) == 1
    assert_ledger_consistent(app)


def test_a_canceled_notification_closes_the_payment_without_credit(app, client, user, shop):
    created = top_up(client, user)
    their_id = shop.payment_for(created["payment_id"])["id"]
    shop.cancel(their_id)
    response = notify(client, shop, their_id)
    assert (response.status_code, response.get_json()["processed"]) == (200, True)
    assert status_of(client, user, created["payment_id"]) == "canceled"
    assert balance(client, user) == "0.00"
    assert deposits(app) == []


def test_from_outside_yookassa_s_networks_is_403_audited_and_never_asked_about(app, client, user, shop):
    created = top_up(client, user)
    their_id = shop.payment_for(created["payment_id"])["id"]
    shop.succeed(their_id)
    shop.requests.clear()

    response = notify(client, shop, their_id, address="203.0.113.9")

    assert response.status_code == 403
    assert shop.requests == []
    (rejected,) = rejections(app, "network_not_allowed")
    assert rejected.details["provider"] == "yookassa"
    assert_untouched(app, client, user, created["payment_id"])


def test_the_allowed_networks_are_configurable(app, client, user, shop, monkeypatch):
    created = top_up(client, user)
    their_id = shop.payment_for(created["payment_id"])["id"]
    shop.succeed(their_id)
    assert notify(client, shop, their_id, address="127.0.0.1").status_code == 403
    monkeypatch.setitem(app.config, "YOOKASSA_WEBHOOK_NETWORKS", ["127.0.0.0/8"])
    assert notify(client, shop, their_id, address=YOOKASSA_NOTIFICATION_ADDRESS).status_code == 403
    response = notify(client, shop, their_id, address="127.0.0.1")
    assert (response.status_code, response.get_json()["processed"]) == (200, True)
    assert balance(client, user) == "100.00"


def test_a_success_claimed_for_an_unpaid_payment_is_rejected_and_credits_nothing(app, client, user, shop):
    created = top_up(client, user)
    their_id = shop.payment_for(created["payment_id"])["id"]
    forged = shop.notification(their_id, "payment.succeeded")
    forged["object"].update(status="succeeded", paid=True)

    response = notify(client, shop, body=forged)

    assert response.status_code == 422
    assert rejections(app, "not_paid_at_provider")
    assert_untouched(app, client, user, created["payment_id"])
    # The real payment, once paid, still goes through.
    shop.succeed(their_id)
    assert notify(client, shop, their_id).get_json()["processed"] is True
    assert balance(client, user) == "100.00"


@pytest.mark.parametrize("tamper", [
    pytest.param({"value": "10.00"}, id="less paid than asked"),
    pytest.param({"value": "1000.01"}, id="a kopeck off"),
    pytest.param({"currency": "USD"}, id="another currency"),
])
def test_what_yookassa_says_was_paid_must_be_the_payment_s_amount_and_currency(app, client, user, shop, tamper):
    created = top_up(client, user)
    their_id = shop.payment_for(created["payment_id"])["id"]
    shop.payments[their_id]["amount"].update(tamper)
    shop.succeed(their_id)

    response = notify(client, shop, their_id)

    assert response.status_code == 422, response.get_json()
    (mismatch,) = audits(app, "payment.amount_mismatch")
    assert mismatch.details["provider"] == "yookassa"
    assert_untouched(app, client, user, created["payment_id"])


def test_another_yookassa_payment_carrying_our_id_credits_nothing(app, client, user, shop):
    created = top_up(client, user)
    cheap = shop.add_payment("1.00", metadata={"payment_id": created["payment_id"]}, status="succeeded")
    response = notify(client, shop, cheap["id"])
    assert response.status_code == 422
    (mismatch,) = audits(app, "payment.amount_mismatch")
    assert set(mismatch.details["mismatches"]) == {"provider_payment_id", "amount"}
    assert_untouched(app, client, user, created["payment_id"])


def test_a_yookassa_payment_naming_another_provider_s_payment_credits_nothing(app, client, user, shop, monkeypatch):
    monkeypatch.setitem(app.config, "PAYMENT_PROVIDER", "mock")
    monkeypatch.setitem(app.config, "MOCK_PAYMENTS_ENABLED", True)
    mock_payment = top_up(client, user)
    monkeypatch.setitem(app.config, "PAYMENT_PROVIDER", "yookassa")
    paid = shop.add_payment(mock_payment["amount"], metadata={"payment_id": mock_payment["payment_id"]},
                            status="succeeded")

    response = notify(client, shop, paid["id"])

    assert response.status_code == 404
    assert rejections(app, "other_provider")
    assert_untouched(app, client, user, mock_payment["payment_id"])


def test_a_payment_yookassa_does_not_know_is_404_and_audited(app, client, user, shop):
    created = top_up(client, user)
    body = shop.notification(shop.payment_for(created["payment_id"])["id"], "payment.succeeded")
    body["object"]["id"] = "2419a771-000f-5000-9000-1edaf29243f2"
    assert notify(client, shop, body=body).status_code == 404
    assert rejections(app, "unknown_payment")
    assert_untouched(app, client, user, created["payment_id"])


@pytest.mark.parametrize("raw", [b"{not json", b'{"type": "notification", "event": "payment.succeeded"}'])
def test_a_malformed_notification_is_400_and_audited(app, client, user, shop, raw):
    created = top_up(client, user)
    assert notify(client, shop, body=raw).status_code == 400
    assert audits(app, "payment.webhook_malformed")
    assert_untouched(app, client, user, created["payment_id"])


def test_an_event_we_do_not_handle_is_acknowledged_and_ignored(app, client, user, shop):
    created = top_up(client, user)
    their_id = shop.payment_for(created["payment_id"])["id"]
    response = notify(client, shop, their_id, "payment.waiting_for_capture")
    assert (response.status_code, response.get_json()) == (200, {"received": True, "processed": False})
    assert_untouched(app, client, user, created["payment_id"])


def test_yookassa_down_while_a_notification_is_checked_is_503_and_its_retry_credits(app, client, user, shop):
    created = top_up(client, user)
    their_id = shop.payment_for(created["payment_id"])["id"]
    shop.succeed(their_id)
    shop.fail(500)
    assert notify(client, shop, their_id).status_code == 503
    assert_untouched(app, client, user, created["payment_id"])
    shop.recover()
    assert notify(client, shop, their_id).get_json()["processed"] is True  # YooKassa retries for 24 h
    assert balance(client, user) == "100.00"


def test_a_notification_over_64_kib_is_413(app, client, user, shop):
    created = top_up(client, user)
    body = shop.notification(shop.payment_for(created["payment_id"])["id"], "payment.succeeded")
    body["object"]["description"] = "x" * (64 * 1024)
    assert notify(client, shop, body=body).status_code == 413
    assert rejections(app, "body_too_large")
    assert_untouched(app, client, user, created["payment_id"])


def test_the_yookassa_path_is_closed_when_yookassa_is_not_the_provider(app, client, user, shop, monkeypatch):
    created = top_up(client, user)
    their_id = shop.payment_for(created["payment_id"])["id"]
    shop.succeed(their_id)
    monkeypatch.setitem(app.config, "PAYMENT_PROVIDER", "stripe")
    assert notify(client, shop, their_id).status_code == 404
    assert rejections(app, "provider_not_configured")
    assert_untouched(app, client, user, created["payment_id"])


def test_behind_a_reverse_proxy_the_forwarded_address_is_the_one_checked(app, backends, tmp_path, accounts, shop):
    from zenzefi_backend import create_app

    proxied = create_app(app_config(backends, tmp_path, TRUSTED_PROXY_HOPS=1, PAYMENT_PROVIDER="yookassa",
                                    **shop.config()))
    client = proxied.test_client()
    user = accounts.signed_in()
    created = top_up(client, user)
    their_id = shop.payment_for(created["payment_id"])["id"]
    shop.succeed(their_id)
    raw = json.dumps(shop.notification(their_id)).encode()

    def deliver(forwarded_for: str | None):
        headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
        # The proxy itself (the socket peer) sits inside YooKassa's networks: only the forwarded address counts.
        return client.post(WEBHOOK, data=raw, content_type="application/json", headers=headers,
                           environ_base={"REMOTE_ADDR": YOOKASSA_NOTIFICATION_ADDRESS})

    assert deliver("203.0.113.9").status_code == 403
    assert deliver(f"{YOOKASSA_NOTIFICATION_ADDRESS}, 203.0.113.9").status_code == 403  # a spoofed first hop
    assert balance(client, user) == "0.00"
    response = deliver(f"203.0.113.9, {YOOKASSA_NOTIFICATION_ADDRESS}")
    assert (response.status_code, response.get_json()["processed"]) == (200, True)
    assert balance(client, user) == "100.00"


# --- reconciliation --------------------------------------------------------------------------------------------

def test_a_lost_notification_is_made_good_by_reconciliation_once(app, client, user, shop):
    created = top_up(client, user)
    shop.succeed(shop.payment_for(created["payment_id"])["id"])
    assert reconcile(app)["checked"] == 0  # not 10 minutes old yet
    assert balance(client, user) == "0.00"

    with clock.travel(timedelta(minutes=11)):
        assert reconcile(app)["settled"] == 1
        assert reconcile(app)["checked"] == 0

    assert balance(client, user) == "100.00"
    assert status_of(client, user, created["payment_id"]) == "succeeded"
    (succeeded,) = audits(app, "payment.succeeded")
    assert succeeded.details["source"] == "reconciliation"
    # The notification arriving late changes nothing.
    late = notify(client, shop, shop.payment_for(created["payment_id"])["id"])
    assert (late.status_code, late.get_json()["processed"]) == (200, False)
    assert len(deposits(app)) == 1
    assert_ledger_consistent(app)


def test_reconciliation_closes_what_yookassa_canceled_and_leaves_the_unpaid_pending(app, client, user, shop):
    canceled = top_up(client, user)
    unpaid = top_up(client, user)
    shop.cancel(shop.payment_for(canceled["payment_id"])["id"])
    with clock.travel(timedelta(minutes=11)):
        counts = reconcile(app)
    assert (counts["checked"], counts["settled"]) == (2, 1)
    assert status_of(client, user, canceled["payment_id"]) == "canceled"
    assert status_of(client, user, unpaid["payment_id"]) == "pending"
    assert balance(client, user) == "0.00"


def test_yookassa_down_during_reconciliation_loses_nothing_and_the_next_run_credits(app, client, user, shop):
    created = top_up(client, user)
    shop.succeed(shop.payment_for(created["payment_id"])["id"])
    shop.stop()
    with clock.travel(timedelta(minutes=11)):
        assert reconcile(app)["unavailable"] == 1
        assert_untouched(app, client, user, created["payment_id"])
        shop.start()
        assert reconcile(app)["settled"] == 1
    assert balance(client, user) == "100.00"


def test_a_payment_yookassa_does_not_know_does_not_hold_up_the_others(app, client, user, shop):
    stray = top_up(client, user)
    del shop.payments[shop.payment_for(stray["payment_id"])["id"]]  # e.g. made with the shop's old credentials
    paid = top_up(client, user)
    shop.succeed(shop.payment_for(paid["payment_id"])["id"])
    with clock.travel(timedelta(minutes=11)):
        counts = reconcile(app)
    assert (counts["checked"], counts["settled"], counts["unavailable"]) == (2, 1, 0)
    assert status_of(client, user, stray["payment_id"]) == "pending"  # expires with the payment
    assert status_of(client, user, paid["payment_id"]) == "succeeded"


@pytest.mark.postgres
@postgres_only
def test_notifications_and_reconciliation_racing_on_one_payment_credit_once(app, client, accounts, shop):
    for _ in range(3):
        user = accounts.signed_in()
        created = top_up(client, user)
        their_id = shop.payment_for(created["payment_id"])["id"]
        shop.succeed(their_id)
        raw = json.dumps(shop.notification(their_id)).encode()

        def deliver(c: FlaskClient, raw=raw):
            response = c.post(WEBHOOK, data=raw, content_type="application/json",
                              environ_base={"REMOTE_ADDR": YOOKASSA_NOTIFICATION_ADDRESS})
            return ("callback", response.status_code, response.get_json()["processed"])

        def run_reconciliation(_c: FlaskClient):
            return ("reconciliation", reconcile(app)["settled"])

        with clock.travel(timedelta(minutes=11)):
            results = race(app, [deliver] * 8 + [run_reconciliation] * 4)
        callbacks = Counter(r for r in results if r[0] == "callback")
        settled_by_reconciliation = sum(r[1] for r in results if r[0] == "reconciliation")
        assert set(callbacks) <= {("callback", 200, True), ("callback", 200, False)}
        assert callbacks[("callback", 200, True)] + settled_by_reconciliation == 1
        assert balance(client, user) == "100.00"
        assert len(deposits(app, user["id"])) == 1
    assert count(app, PaymentWebhookEvent) <= 3
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Payment)
                                 .where(Payment.status == "succeeded")) == 3
    assert_ledger_consistent(app)
