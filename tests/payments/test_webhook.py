"""`POST /webhooks/payment`: signature, body, and the exactly-once credit."""
from __future__ import annotations

import json
import uuid

import pytest

from zenzefi_backend.extensions import db
from zenzefi_backend.notifications.models import OutboxEvent
from zenzefi_backend.payments.models import PaymentWebhookEvent

from .helpers import (
    WEBHOOK,
    assert_ledger_consistent,
    assert_untouched,
    audits,
    balance,
    count,
    deposits,
    encode,
    event,
    sign,
    status_of,
)

PROCESSED = {"received": True, "processed": True}
IGNORED = {"received": True, "processed": False}


def rejections(app) -> list[str]:
    return [entry.details["reason"] for entry in audits(app, "payment.webhook_rejected")]


def test_first_delivery_credits_the_balance_once(app, client, provider, user, payment):
    body = event(payment["payment_id"])
    response = provider.deliver(body)
    assert response.status_code == 200
    assert response.get_json() == PROCESSED
    assert balance(client, user) == "100.00"

    [deposit] = deposits(app)
    assert str(deposit.user_id) == user["id"] and str(deposit.amount) == "100.00"
    assert deposit.reference_type == "payment" and deposit.reference_id == payment["payment_id"]
    stored = client.get(f"/api/v1/currency/payments/{payment['payment_id']}", headers=user["headers"]).get_json()
    assert stored["status"] == "succeeded" and stored["completed_at"] is not None

    with app.app_context():
        [topped_up] = db.session.scalars(db.select(OutboxEvent).where(OutboxEvent.event_type == "balance.topped_up"))
        assert topped_up.payload["payment_id"] == payment["payment_id"]
        assert topped_up.payload["amount_znc"] == "100.00" and topped_up.payload["balance"] == "100.00"
    [audit] = audits(app, "payment.succeeded")
    assert audit.resource_id == payment["payment_id"] and audit.details["event_id"] == body["id"]
    assert_ledger_consistent(app)


def test_a_replayed_event_id_changes_nothing(app, client, provider, user, payment):
    body = event(payment["payment_id"])
    assert provider.deliver(body).get_json() == PROCESSED
    for _ in range(3):
        response = provider.deliver(body)  # a fresh signature each time, as providers do on retries
        assert response.status_code == 200 and response.get_json() == IGNORED
    assert balance(client, user) == "100.00"
    assert len(deposits(app)) == 1
    assert len(audits(app, "payment.succeeded")) == 1
    assert_ledger_consistent(app)


def test_an_event_for_a_payment_no_longer_pending_changes_nothing(app, client, provider, user, payment):
    assert provider.deliver(event(payment["payment_id"])).get_json() == PROCESSED
    again = provider.deliver(event(payment["payment_id"]))  # another event id, same payment
    assert again.status_code == 200 and again.get_json() == IGNORED
    canceled = provider.deliver(event(payment["payment_id"], "payment.canceled"))
    assert canceled.status_code == 200 and canceled.get_json() == IGNORED
    assert status_of(client, user, payment["payment_id"]) == "succeeded"
    assert balance(client, user) == "100.00" and len(deposits(app)) == 1
    assert_ledger_consistent(app)


def test_cancel_changes_the_state_only_and_a_later_success_is_not_credited(app, client, provider, user, payment):
    response = provider.deliver(event(payment["payment_id"], "payment.canceled"))
    assert response.status_code == 200 and response.get_json() == PROCESSED
    stored = client.get(f"/api/v1/currency/payments/{payment['payment_id']}", headers=user["headers"]).get_json()
    assert stored["status"] == "canceled" and stored["completed_at"] is not None
    assert len(audits(app, "payment.canceled")) == 1

    late = provider.deliver(event(payment["payment_id"]))
    assert late.status_code == 200 and late.get_json() == IGNORED
    assert balance(client, user) == "0.00" and deposits(app) == []
    [flagged] = audits(app, "payment.success_not_applied")
    assert flagged.resource_id == payment["payment_id"] and flagged.details["status"] == "canceled"


@pytest.mark.parametrize("event_type", ["payment.refunded", "payment.waiting_for_capture", "charge.created", "x"])
def test_an_unhandled_event_type_is_acknowledged_and_ignored(app, client, provider, user, payment, event_type):
    response = provider.deliver(event(payment["payment_id"], event_type))
    assert response.status_code == 200 and response.get_json() == IGNORED
    assert_untouched(app, client, user, payment["payment_id"])


def test_an_unknown_payment_is_404(app, client, provider, user, payment):
    response = provider.deliver(event(str(uuid.uuid4())))
    assert response.status_code == 404
    assert response.get_json()["code"] == 404
    assert_untouched(app, client, user, payment["payment_id"])


@pytest.mark.parametrize("amount", ["99.99", "100.01", "1000.00", "1"])
def test_an_amount_mismatch_is_422_credits_nothing_and_is_audited(app, client, provider, user, payment, amount):
    body = event(payment["payment_id"], amount_znc=amount)
    response = provider.deliver(body)
    assert response.status_code == 422
    assert response.get_json()["code"] == 422
    assert_untouched(app, client, user, payment["payment_id"])
    [audit] = audits(app, "payment.amount_mismatch")
    assert audit.resource_id == payment["payment_id"]
    assert audit.details["expected"] == "100.00" and audit.details["event_id"] == body["id"]

    # The provider may still send the right event later.
    assert provider.deliver(event(payment["payment_id"])).get_json() == PROCESSED
    assert balance(client, user) == "100.00"


def test_an_amount_written_as_a_number_matches(client, provider, user, payment):
    assert provider.deliver(event(payment["payment_id"], amount_znc=100)).get_json() == PROCESSED
    assert balance(client, user) == "100.00"


# --- signature -------------------------------------------------------------------------------------------------


def test_missing_signature_is_401_and_audited(app, client, provider, user, payment):
    response = provider.deliver(event(payment["payment_id"]), header=None)
    assert response.status_code == 401
    assert response.get_json()["code"] == 401
    assert_untouched(app, client, user, payment["payment_id"])
    assert rejections(app) == ["missing_signature"]


@pytest.mark.parametrize("header", [
    "",
    "garbage",
    "t=,v1=",
    "v1=" + "a" * 64,
    "t=1700000000",
    "t=abc,v1=" + "a" * 64,
    "t=-5,v1=" + "a" * 64,
    "t=1.5,v1=" + "a" * 64,
    "t=\u00b2,v1=" + "a" * 64,
    "t=1,t=2,v1=" + "a" * 64,
    "t=1700000000,v1=not-hex-at-all",
    "t=1700000000,v1=" + "a" * 63,
    "t=1700000000,v1=" + "g" * 64,
    "t=1700000000;v1=" + "a" * 64,
    "t=1700000000,v1=" + "a" * 64 + ",junk",
    "t=" + "9" * 5000 + ",v1=" + "a" * 64,
])
def test_a_malformed_signature_header_is_401(app, client, provider, user, payment, header):
    response = provider.deliver(event(payment["payment_id"]), header=header)
    assert response.status_code == 401
    assert_untouched(app, client, user, payment["payment_id"])
    assert rejections(app) in (["missing_signature"], ["malformed_signature"])


def test_a_wrong_secret_is_401(app, client, provider, user, payment):
    response = provider.deliver(event(payment["payment_id"]), secret="not-the-secret")
    assert response.status_code == 401
    assert_untouched(app, client, user, payment["payment_id"])
    assert rejections(app) == ["signature_mismatch"]


def test_a_tampered_body_is_401(app, client, provider, user, payment):
    original = encode(event(payment["payment_id"], amount_znc="1.00"))
    header = sign(original, provider.now(), provider.secret)
    tampered = original.replace(b'"1.00"', b'"100.00"')
    assert tampered != original
    response = provider.deliver(tampered, header=header)
    assert response.status_code == 401
    assert_untouched(app, client, user, payment["payment_id"])
    assert rejections(app) == ["signature_mismatch"]


def test_the_signature_covers_the_raw_bytes_not_the_parsed_json(app, client, provider, user, payment):
    raw = json.dumps(event(payment["payment_id"]), indent=2, sort_keys=True).encode()
    reformatted = json.dumps(json.loads(raw)).encode()
    response = provider.deliver(reformatted, header=sign(raw, provider.now(), provider.secret))
    assert response.status_code == 401
    assert provider.deliver(raw).get_json() == PROCESSED


def test_a_signature_for_another_timestamp_is_401(app, client, provider, user, payment):
    raw = encode(event(payment["payment_id"]))
    now = provider.now()
    forged = sign(raw, now - 10, provider.secret).replace(f"t={now - 10}", f"t={now}")
    assert provider.deliver(raw, header=forged).status_code == 401
    assert_untouched(app, client, user, payment["payment_id"])


@pytest.mark.parametrize("skew", [-301, 301, -3600, 86400])
def test_a_timestamp_more_than_300_s_away_is_401(app, client, provider, user, payment, frozen_clock, skew):
    response = provider.deliver(event(payment["payment_id"]), timestamp=provider.now() + skew)
    assert response.status_code == 401
    assert_untouched(app, client, user, payment["payment_id"])
    assert rejections(app) == ["timestamp_out_of_tolerance"]


@pytest.mark.parametrize("skew", [-300, 300])
def test_a_timestamp_within_300_s_is_accepted(client, provider, user, payment, frozen_clock, skew):
    response = provider.deliver(event(payment["payment_id"]), timestamp=provider.now() + skew)
    assert response.status_code == 200 and response.get_json() == PROCESSED
    assert balance(client, user) == "100.00"


def test_any_matching_v1_is_enough_and_other_schemes_are_ignored(client, provider, user, payment):
    raw = encode(event(payment["payment_id"]))
    now = provider.now()
    good = sign(raw, now, provider.secret).split(",")[1]
    stale = sign(raw, now, "the-rotated-out-secret").split(",")[1]
    header = f"t={now}, v0={'0' * 64}, {stale}, v1={good[3:].upper()}"
    response = provider.deliver(raw, header=header)
    assert response.status_code == 200 and response.get_json() == PROCESSED


def test_rejections_never_record_the_secret_and_stay_recorded(app, provider, payment):
    provider.deliver(event(payment["payment_id"]), secret="wrong")
    provider.deliver(event(payment["payment_id"]), header=None)
    provider.deliver(event(payment["payment_id"]), header="t=1,v1=zz")
    entries = audits(app, "payment.webhook_rejected")
    assert [e.details["reason"] for e in entries] == ["signature_mismatch", "missing_signature",
                                                      "malformed_signature"]
    for entry in entries:
        assert provider.secret not in json.dumps(entry.details)
        assert entry.actor_id is None and entry.resource_type == "payment_webhook"


def test_the_signature_is_checked_before_the_body(app, provider, payment):
    response = provider.deliver(b"{not json", header="t=1,v1=" + "a" * 64)
    assert response.status_code == 401


# --- body --------------------------------------------------------------------------------------------------------


def malformed_bodies(payment_id: str) -> list[bytes]:
    good = event(payment_id)
    return [encode(b) for b in [
        b"{not json",
        b"",
        b"[]",
        b'"payment.succeeded"',
        b"null",
        b"\xff\xfe{}",
        b'{"id": "evt_1", "type": "payment.succeeded", "data": {"payment_id": "%s", "amount_znc": NaN}}'
        % payment_id.encode(),
        b'{"id": "evt_1", "id": "evt_2", "type": "payment.succeeded", "data": {"payment_id": "%s", '
        b'"amount_znc": "100.00"}}' % payment_id.encode(),
        {k: v for k, v in good.items() if k != "id"},
        {k: v for k, v in good.items() if k != "type"},
        {k: v for k, v in good.items() if k != "data"},
        {**good, "id": ""},
        {**good, "id": 12345},
        {**good, "id": "x" * 256},
        {**good, "id": "evt\u0000nul"},
        {**good, "id": "evt\nnewline"},
        {**good, "type": "payment.succeeded\u0000"},
        {**good, "type": None},
        {**good, "data": "payment"},
        {**good, "data": {"amount_znc": "100.00"}},
        {**good, "data": {"payment_id": "not-a-uuid", "amount_znc": "100.00"}},
        {**good, "data": {"payment_id": 7, "amount_znc": "100.00"}},
        {**good, "data": {"payment_id": payment_id}},
        {**good, "data": {"payment_id": payment_id, "amount_znc": "abc"}},
        {**good, "data": {"payment_id": payment_id, "amount_znc": "100.001"}},
        {**good, "data": {"payment_id": payment_id, "amount_znc": -100}},
        {**good, "data": {"payment_id": payment_id, "amount_znc": None}},
        {**good, "data": {"payment_id": payment_id, "amount_znc": "1E+999999999"}},
        {**good, "data": {"payment_id": payment_id, "amount_znc": "123456789012345678901234567890.001"}},
        b'{"id": "evt_1", "type": "payment.succeeded", "data": {"payment_id": "%s", "amount_znc": 1e999999999}}'
        % payment_id.encode(),
        b'{"id": "evt_1", "type": "payment.succeeded", "data": {"payment_id": "%s", "amount_znc": 1%s}}'
        % (payment_id.encode(), b"0" * 5000),
    ]]


def test_a_malformed_body_with_a_valid_signature_is_400(app, client, provider, user, payment):
    for raw in malformed_bodies(payment["payment_id"]):
        response = provider.deliver(raw)
        assert response.status_code == 400, (raw, response.get_json())
        assert response.is_json and response.get_json()["code"] == 400
    assert_untouched(app, client, user, payment["payment_id"])
    assert rejections(app) == []


def test_an_unhandled_type_still_needs_a_well_formed_event(provider, payment):
    assert provider.deliver({"id": "evt_1", "type": "charge.created"}).status_code == 400
    assert provider.deliver({"id": "evt_1", "type": "charge.created",
                             "data": {"payment_id": payment["payment_id"]}}).get_json() == IGNORED


def test_extra_fields_from_the_provider_are_ignored(client, provider, user, payment):
    body = event(payment["payment_id"])
    body.update(created=1700000000, livemode=False)
    body["data"]["currency"] = "RUB"
    assert provider.deliver(body).get_json() == PROCESSED
    assert balance(client, user) == "100.00"


def test_an_oversized_body_is_413_and_audited(app, client, provider, user, payment):
    body = event(payment["payment_id"])
    body["padding"] = "x" * 70_000
    response = provider.deliver(body)
    assert response.status_code == 413
    assert response.is_json
    assert_untouched(app, client, user, payment["payment_id"])
    assert rejections(app) == ["body_too_large"]


def test_the_event_id_is_stored_with_its_payment(app, provider, payment):
    body = event(payment["payment_id"], event_id="evt_provider_42")
    provider.deliver(body)
    with app.app_context():
        stored = db.session.get(PaymentWebhookEvent, "evt_provider_42")
        assert str(stored.payment_id) == payment["payment_id"] and stored.event_type == "payment.succeeded"
    assert count(app, PaymentWebhookEvent) == 1


def test_webhook_needs_no_jwt_and_is_documented_with_its_signature_header(client):
    operation = client.get("/openapi.json").get_json()["paths"][WEBHOOK]["post"]
    assert operation["security"] == []
    assert [p["name"] for p in operation["parameters"]] == ["X-Zenzefi-Signature"]
    assert {"200", "400", "401", "404", "422"} <= set(operation["responses"])
