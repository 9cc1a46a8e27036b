"""The YooKassa provider against the local fake of the YooKassa API, through the official library (never mocked):
what a create sends, idempotence, every way the API can fail (→ ProviderUnavailable, 503), the timeout, the
source-network check and the strict reading of notifications and of the API's answers."""
from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from datetime import timedelta
from decimal import Decimal
from functools import partial

import pytest
import yookassa
from yookassa.domain.common.security_helper import SecurityHelper

from tests.e2e.harness import TcpRelay
from tests.fixtures.fake_yookassa import YOOKASSA_NOTIFICATION_ADDRESS, FakeYooKassa
from tests.fixtures.race import together
from zenzefi_backend.clock import now
from zenzefi_backend.errors import BadRequest
from zenzefi_backend.payments.models import Payment
from zenzefi_backend.payments.providers import (
    AmountNotAccepted,
    CallbackRejected,
    ProviderUnavailable,
    get_provider,
)
from zenzefi_backend.payments.providers import yookassa as yookassa_provider
from zenzefi_backend.payments.providers.yookassa import YooKassaProvider


def transient_payment(amount: str = "1000.00", currency: str = "RUB", amount_znc: str = "100.00",
                      provider_payment_id: str | None = None) -> Payment:
    """A payment as `create_payment` hands it to the provider: final id and amounts, not stored yet."""
    created = now()
    return Payment(id=uuid.uuid4(), user_id=uuid.uuid4(), amount_znc=Decimal(amount_znc), currency=currency,
                   amount=Decimal(amount), status="pending", provider="yookassa",
                   provider_payment_id=provider_payment_id, created_at=created,
                   expires_at=created + timedelta(hours=24))


@pytest.fixture
def settings(app, fake_yookassa) -> dict:
    """The app's configuration (its defaults: networks, timeout, FRONTEND_URL) pointed at the fake."""
    return {**app.config, "PAYMENT_PROVIDER": "yookassa", **fake_yookassa.config()}


@pytest.fixture
def provider(settings) -> YooKassaProvider:
    found = get_provider("yookassa", settings)
    assert isinstance(found, YooKassaProvider)
    return found


def notification_body(fake: FakeYooKassa, payment_id: str, event: str | None = None) -> bytes:
    return json.dumps(fake.notification(payment_id, event)).encode()


def test_the_registry_builds_it_for_rub_with_a_status_call(provider):
    assert (provider.name, provider.currencies, provider.reconciles) == ("yookassa", ("RUB",), True)


def test_a_checkout_is_a_redirect_payment_keyed_and_tagged_with_our_id(provider, fake_yookassa):
    payment = transient_payment(amount="1234.50", amount_znc="123.45")

    checkout = provider.create_checkout(payment, "https://shop.example/back?from=zenzefi")

    (sent,) = fake_yookassa.api_requests("POST")
    assert sent.headers["idempotence-key"] == str(payment.id)
    assert sent.body["amount"] == {"value": "1234.50", "currency": "RUB"}
    assert sent.body["capture"] is True
    assert sent.body["confirmation"] == {
        "type": "redirect", "return_url": f"https://shop.example/back?from=zenzefi&payment_id={payment.id}"}
    assert sent.body["metadata"]["payment_id"] == str(payment.id)
    assert sent.body["description"] == "Zenzefi top-up: 123.45 ZNC"
    at_yookassa = fake_yookassa.payment(checkout.provider_payment_id)
    assert checkout.payment_url == at_yookassa["confirmation"]["confirmation_url"]
    assert at_yookassa["status"] == "pending"


def test_without_a_return_url_the_customer_comes_back_to_the_frontend(provider, fake_yookassa, settings):
    payment = transient_payment()
    provider.create_checkout(payment, None)
    (sent,) = fake_yookassa.api_requests("POST")
    assert sent.body["confirmation"]["return_url"] == f"{settings['FRONTEND_URL']}/?payment_id={payment.id}"


def test_repeating_a_create_makes_no_second_yookassa_payment(provider, fake_yookassa):
    payment = transient_payment()
    first = provider.create_checkout(payment, None)
    again = provider.create_checkout(payment, None)
    assert again == first
    assert len(fake_yookassa.payments) == 1
    assert len(fake_yookassa.api_requests("POST")) == 2


def test_the_same_key_with_another_amount_is_refused_not_a_second_payment(provider, fake_yookassa):
    payment = transient_payment()
    provider.create_checkout(payment, None)
    payment.amount = Decimal("2000.00")
    with pytest.raises(ProviderUnavailable):
        provider.create_checkout(payment, None)
    assert len(fake_yookassa.payments) == 1


@pytest.mark.parametrize(("amount", "currency", "complaint"), [
    (Decimal("0.99"), "RUB", "below the yookassa minimum of 1.00 RUB"),
    (Decimal("10.005"), "RUB", "RUB has 2 decimals"),
    (Decimal("100.00"), "USD", "does not take USD"),
    (Decimal("100.00"), "EUR", "does not take EUR"),
])
def test_amounts_yookassa_cannot_take_are_422_before_any_call(provider, fake_yookassa, amount, currency, complaint):
    with pytest.raises(AmountNotAccepted) as refused:
        provider.check_amount(amount, currency)
    assert complaint in refused.value.message
    assert fake_yookassa.requests == []


def test_the_minimum_itself_is_accepted(provider):
    provider.check_amount(Decimal("1.00"), "RUB")


@pytest.mark.parametrize("failure", [
    pytest.param({"status": 500}, id="500 with YooKassa's error body"),
    pytest.param({"status": 503}, id="503"),
    pytest.param({"status": 502, "html": True}, id="502 HTML from a proxy"),
    pytest.param({"status": 202}, id="202 still processing"),
    pytest.param({"status": 429}, id="429 too many requests"),
])
def test_an_api_that_fails_is_unavailable(provider, fake_yookassa, failure):
    fake_yookassa.fail(**failure)
    with pytest.raises(ProviderUnavailable):
        provider.create_checkout(transient_payment(), None)
    with pytest.raises(ProviderUnavailable):
        provider.fetch(transient_payment(provider_payment_id="2419a771-000f-5000-9000-1edaf29243f2"))
    assert len(fake_yookassa.requests) == 2  # asked once each: no retries of our own or of the library


def test_an_api_that_is_down_is_unavailable(provider, fake_yookassa):
    fake_yookassa.stop()
    with pytest.raises(ProviderUnavailable):
        provider.create_checkout(transient_payment(), None)
    with pytest.raises(ProviderUnavailable):
        provider.fetch(transient_payment(provider_payment_id="2419a771-000f-5000-9000-1edaf29243f2"))


def test_wrong_credentials_are_unavailable_and_logged_as_an_error_without_the_key(settings, fake_yookassa, caplog,
                                                                                 monkeypatch):
    # Alembic's fileConfig (the session's migration) disables loggers that existed before it ran.
    monkeypatch.setattr(logging.getLogger(yookassa_provider.__name__), "disabled", False)
    wrong = get_provider("yookassa", {**settings, "YOOKASSA_SECRET_KEY": "test_not-the-right-key"})
    with pytest.raises(ProviderUnavailable):
        wrong.create_checkout(transient_payment(), None)
    assert fake_yookassa.payments == {}
    (record,) = [r for r in caplog.records if r.name.endswith("yookassa")]
    assert record.levelname == "ERROR" and record.code == "invalid_credentials"
    assert "not-the-right-key" not in caplog.text and fake_yookassa.secret_key not in caplog.text


def test_an_api_that_stops_answering_is_given_up_on_after_the_timeout(settings, fake_yookassa):
    """The library itself sends without a timeout: a hung API would hold a web worker forever."""
    with TcpRelay("127.0.0.1", fake_yookassa.port) as relay:
        relay.hang()
        hung = get_provider("yookassa", {**settings, "YOOKASSA_API_URL": f"http://{relay.address}/v3",
                                         "PAYMENT_PROVIDER_TIMEOUT": 0.5})
        outcome: list[BaseException | None] = []

        def create() -> None:
            try:
                hung.create_checkout(transient_payment(), None)
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                outcome.append(exc)

        started = time.monotonic()
        caller = threading.Thread(target=create, daemon=True)
        caller.start()
        caller.join(timeout=10)
        assert not caller.is_alive(), "the create never gave up on a hung API"
        assert isinstance(outcome[0], ProviderUnavailable)
        assert time.monotonic() - started < 5


def test_each_app_uses_its_own_shop_never_the_library_global_configuration(settings, fake_yookassa):
    """Two shops used at once from several threads: every request reaches its own shop with its own key."""
    other = FakeYooKassa(shop_id="700100", secret_key="test_other-shop-secret-key-0000000000").start()
    try:
        providers = [get_provider("yookassa", settings), get_provider("yookassa", {**settings, **other.config()})]

        def create(index: int) -> BaseException | None:
            try:
                for _ in range(3):
                    providers[index % 2].create_checkout(transient_payment(), None)
            except BaseException as exc:  # noqa: BLE001
                return exc
            return None

        errors = [error for error in together([partial(create, i) for i in range(8)], timeout=10) if error]
        assert errors == []
        assert (len(fake_yookassa.payments), len(other.payments)) == (12, 12)
        assert yookassa.Configuration.account_id is None and yookassa.Configuration.secret_key is None
    finally:
        other.stop()


# --- notifications ---------------------------------------------------------------------------------------------

@pytest.fixture
def paid(provider, fake_yookassa) -> tuple[Payment, str]:
    payment = transient_payment()
    checkout = provider.create_checkout(payment, None)
    payment.provider_payment_id = checkout.provider_payment_id
    fake_yookassa.succeed(checkout.provider_payment_id)
    return payment, checkout.provider_payment_id


def test_a_notification_from_yookassa_is_the_api_s_word_on_the_payment(provider, fake_yookassa, paid):
    payment, their_id = paid
    fake_yookassa.requests.clear()

    verdict = provider.verify_callback(notification_body(fake_yookassa, their_id), {}, YOOKASSA_NOTIFICATION_ADDRESS)

    assert verdict is not None
    assert (verdict.status, verdict.provider_payment_id, verdict.payment_id) == ("succeeded", their_id, payment.id)
    assert (verdict.amount, verdict.currency) == (Decimal("1000.00"), "RUB")
    assert (verdict.event_id, verdict.event_type) == (f"yookassa:{their_id}:succeeded", "payment.succeeded")
    (asked,) = fake_yookassa.requests
    assert (asked.method, asked.path) == ("GET", f"/v3/payments/{their_id}")


def test_the_body_s_amount_status_and_metadata_are_never_believed(provider, fake_yookassa, paid):
    payment, their_id = paid
    body = fake_yookassa.notification(their_id)
    body["object"].update(amount={"value": "999999.00", "currency": "RUB"}, metadata={"payment_id": str(uuid.uuid4())})
    verdict = provider.verify_callback(json.dumps(body).encode(), {}, YOOKASSA_NOTIFICATION_ADDRESS)
    assert (verdict.amount, verdict.payment_id) == (Decimal("1000.00"), payment.id)


def test_a_success_the_api_does_not_confirm_is_rejected(provider, fake_yookassa):
    payment = transient_payment()
    their_id = provider.create_checkout(payment, None).provider_payment_id
    forged = fake_yookassa.notification(their_id, "payment.succeeded")
    forged["object"].update(status="succeeded", paid=True)
    with pytest.raises(CallbackRejected) as rejected:
        provider.verify_callback(json.dumps(forged).encode(), {}, YOOKASSA_NOTIFICATION_ADDRESS)
    assert (rejected.value.code, rejected.value.reason) == (422, "not_paid_at_provider")


def test_a_cancel_the_api_does_not_confirm_is_rejected(provider, fake_yookassa, paid):
    _, their_id = paid
    with pytest.raises(CallbackRejected) as rejected:
        provider.verify_callback(notification_body(fake_yookassa, their_id, "payment.canceled"), {},
                                 YOOKASSA_NOTIFICATION_ADDRESS)
    assert (rejected.value.code, rejected.value.reason) == (422, "status_mismatch")


def test_a_canceled_payment_is_a_canceled_verdict(provider, fake_yookassa):
    payment = transient_payment()
    their_id = provider.create_checkout(payment, None).provider_payment_id
    fake_yookassa.cancel(their_id)
    verdict = provider.verify_callback(notification_body(fake_yookassa, their_id), {}, YOOKASSA_NOTIFICATION_ADDRESS)
    assert (verdict.status, verdict.event_id) == ("canceled", f"yookassa:{their_id}:canceled")


def test_a_payment_yookassa_does_not_know_is_rejected_as_unknown(provider, fake_yookassa, paid):
    _, their_id = paid
    body = fake_yookassa.notification(their_id)
    body["object"]["id"] = "2419a771-000f-5000-9000-1edaf29243f2"
    with pytest.raises(CallbackRejected) as rejected:
        provider.verify_callback(json.dumps(body).encode(), {}, YOOKASSA_NOTIFICATION_ADDRESS)
    assert (rejected.value.code, rejected.value.reason) == (404, "unknown_payment")


def test_a_yookassa_payment_without_our_id_is_not_ours(provider, fake_yookassa):
    elsewhere = fake_yookassa.add_payment("500.00", status="succeeded")
    with pytest.raises(CallbackRejected) as rejected:
        provider.verify_callback(notification_body(fake_yookassa, elsewhere["id"]), {}, YOOKASSA_NOTIFICATION_ADDRESS)
    assert (rejected.value.code, rejected.value.reason) == (404, "unknown_payment")


@pytest.mark.parametrize("event", ["payment.waiting_for_capture", "refund.succeeded", "payout.canceled"])
def test_events_we_do_not_handle_are_ignored_without_asking_the_api(provider, fake_yookassa, paid, event):
    _, their_id = paid
    fake_yookassa.requests.clear()
    assert provider.verify_callback(notification_body(fake_yookassa, their_id, event), {},
                                    YOOKASSA_NOTIFICATION_ADDRESS) is None
    assert fake_yookassa.requests == []


def test_the_api_down_while_checking_a_notification_is_unavailable(provider, fake_yookassa, paid):
    _, their_id = paid
    body = notification_body(fake_yookassa, their_id)
    fake_yookassa.fail(500)
    with pytest.raises(ProviderUnavailable):
        provider.verify_callback(body, {}, YOOKASSA_NOTIFICATION_ADDRESS)


@pytest.mark.parametrize("address", [*SecurityHelper.YOOKASSA_NETWORKS[:2], "77.75.153.127", "185.71.77.31",
                                     "2a02:5180:0:1509::1", "::ffff:185.71.76.10"])
def test_the_default_networks_are_the_ones_the_library_ships(provider, fake_yookassa, paid, address):
    _, their_id = paid
    address = address.split("/")[0]
    assert provider.verify_callback(notification_body(fake_yookassa, their_id), {}, address).status == "succeeded"


@pytest.mark.parametrize("address", ["127.0.0.1", "77.75.153.128", "185.71.76.32", "10.0.0.1", "2a02:5180:0:1510::1",
                                     "", "not-an-address", "185.71.76.10, 127.0.0.1"])
def test_anywhere_else_is_rejected_before_the_body_is_read(provider, fake_yookassa, address):
    with pytest.raises(CallbackRejected) as rejected:
        provider.verify_callback(b"not even json", {}, address)
    assert (rejected.value.code, rejected.value.reason) == (403, "network_not_allowed")
    assert fake_yookassa.requests == []


def test_the_networks_come_from_the_configuration(settings, fake_yookassa, paid):
    _, their_id = paid
    local = get_provider("yookassa", {**settings, "YOOKASSA_WEBHOOK_NETWORKS": ["127.0.0.0/8"]})
    assert local.verify_callback(notification_body(fake_yookassa, their_id), {}, "127.0.0.1").status == "succeeded"
    with pytest.raises(CallbackRejected):
        local.verify_callback(notification_body(fake_yookassa, their_id), {}, YOOKASSA_NOTIFICATION_ADDRESS)


@pytest.mark.parametrize("raw", [
    pytest.param(b"\xff\xfe", id="not UTF-8"),
    pytest.param(b"{", id="not JSON"),
    pytest.param(b"[]", id="not an object"),
    pytest.param(b'{"type": "notification", "event": "payment.succeeded", "object": {"id": "a"}, "type": "x"}',
                 id="duplicate key"),
    pytest.param(b'{"type": "notification", "event": NaN, "object": {"id": "a"}}', id="NaN"),
    pytest.param(b'{"type": "event", "event": "payment.succeeded", "object": {"id": "a"}}', id="not a notification"),
    pytest.param(b'{"type": "notification", "object": {"id": "a"}}', id="no event"),
    pytest.param(b'{"type": "notification", "event": "", "object": {"id": "a"}}', id="empty event"),
    pytest.param(b'{"type": "notification", "event": "payment.succeeded"}', id="no object"),
    pytest.param(b'{"type": "notification", "event": "payment.succeeded", "object": {}}', id="no object id"),
    pytest.param(b'{"type": "notification", "event": "payment.succeeded", "object": {"id": 7}}', id="id a number"),
    pytest.param(b'{"type": "notification", "event": "payment.succeeded", "object": {"id": "../me"}}',
                 id="id a path"),
    pytest.param(b'{"type": "notification", "event": "payment.succeeded", "object": {"id": "a?b=c"}}',
                 id="id with a query"),
])
def test_malformed_notifications_are_400_and_never_reach_the_api(provider, fake_yookassa, raw):
    with pytest.raises(BadRequest):
        provider.verify_callback(raw, {}, YOOKASSA_NOTIFICATION_ADDRESS)
    assert fake_yookassa.requests == []


# --- status checks (reconciliation) ---------------------------------------------------------------------------

def test_fetch_maps_yookassa_statuses_to_ours(provider, fake_yookassa):
    payment = transient_payment()
    payment.provider_payment_id = provider.create_checkout(payment, None).provider_payment_id
    assert provider.fetch(payment).status == "pending"
    fake_yookassa.payments[payment.provider_payment_id]["status"] = "waiting_for_capture"
    assert provider.fetch(payment).status == "pending"  # only held, not taken: capture=true never leaves it here
    fake_yookassa.payments[payment.provider_payment_id]["status"] = "pending"
    fake_yookassa.succeed(payment.provider_payment_id)
    verdict = provider.fetch(payment)
    assert (verdict.status, verdict.payment_id, verdict.amount, verdict.currency, verdict.event_id) == \
        ("succeeded", payment.id, Decimal("1000.00"), "RUB", None)


def test_fetch_of_a_canceled_payment(provider, fake_yookassa):
    payment = transient_payment()
    payment.provider_payment_id = provider.create_checkout(payment, None).provider_payment_id
    fake_yookassa.cancel(payment.provider_payment_id, reason="insufficient_funds")
    assert provider.fetch(payment).status == "canceled"


@pytest.mark.parametrize("tamper", [
    pytest.param({"status": "refunded"}, id="unknown status"),
    pytest.param({"amount": {"value": 1000.0, "currency": "RUB"}}, id="amount a float"),
    pytest.param({"amount": {"value": "NaN", "currency": "RUB"}}, id="amount NaN"),
    pytest.param({"amount": {"value": "lots", "currency": "RUB"}}, id="amount not a number"),
    pytest.param({"metadata": {}}, id="no payment id in metadata"),
    pytest.param({"metadata": {"payment_id": "42"}}, id="payment id not a uuid"),
    pytest.param({"id": "2419a771-000f-5000-9000-1edaf29243f2"}, id="another payment's id"),
])
def test_an_answer_we_cannot_trust_leaves_the_payment_pending(provider, fake_yookassa, tamper):
    payment = transient_payment()
    payment.provider_payment_id = provider.create_checkout(payment, None).provider_payment_id
    fake_yookassa.succeed(payment.provider_payment_id)
    fake_yookassa.payments[payment.provider_payment_id].update(tamper)
    verdict = provider.fetch(payment)
    assert (verdict.status, verdict.payment_id, verdict.amount) == ("pending", payment.id, None)


def test_a_payment_yookassa_does_not_know_stays_pending(provider, fake_yookassa):
    payment = transient_payment(provider_payment_id="2419a771-000f-5000-9000-1edaf29243f2")
    assert provider.fetch(payment).status == "pending"
    assert len(fake_yookassa.api_requests("GET")) == 1


def test_amounts_are_read_exactly_as_yookassa_writes_them(provider, fake_yookassa):
    """The library's own models carry amounts through float; the verdict must keep every digit it was sent."""
    payment = transient_payment()
    payment.provider_payment_id = provider.create_checkout(payment, None).provider_payment_id
    fake_yookassa.payments[payment.provider_payment_id]["amount"]["value"] = "1000.004"
    assert provider.fetch(payment).amount == Decimal("1000.004")  # so settle sees the mismatch
