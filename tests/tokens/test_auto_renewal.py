"""Auto-renewal (SPEC §3.9): the user's choice over the API, and the hourly job that buys one replacement per
token expiring within 24 h — once, on any number of workers — and e-mails its secret."""
from __future__ import annotations

import hashlib
import re
import uuid
from collections import Counter
from datetime import timedelta
from decimal import Decimal
from email import message_from_bytes, policy
from email.message import EmailMessage as Mail
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.fixtures.actions import proxy_status
from tests.fixtures.race import race
from tests.support import POSTGRES_ONLY_REASON
from zenzefi_backend.audit.models import AuditLog
from zenzefi_backend.clock import now, travel
from zenzefi_backend.extensions import db
from zenzefi_backend.jobs.renewal import auto_renewal_job
from zenzefi_backend.ledger import services as ledger
from zenzefi_backend.ledger.models import Transaction
from zenzefi_backend.notifications.email import SEAL_PURPOSE, send_email
from zenzefi_backend.notifications.models import EmailMessage, OutboxEvent
from zenzefi_backend.sealing import unseal
from zenzefi_backend.tokens.models import AccessToken
from zenzefi_backend.tokens.renewal import renew_expiring_tokens

SETTINGS = "/api/v1/users/me/auto-renewal"
PURCHASE = "/api/v1/tokens/purchase"
DEFAULTS = {"enabled": False, "duration_hours": 24, "scope": "full", "cost_per_renewal": "18.00"}
SOON = timedelta(hours=5)
NOTHING = {"renewed": 0, "failed": 0, "skipped": 0, "errors": 0}
SECRET_LINE = re.compile(r"New access token: (\S+)")


@pytest.fixture(autouse=True)
def mailbox(app) -> Path:
    folder = Path(app.instance_path) / "mail"
    for leftover in folder.glob("*.eml"):
        leftover.unlink()
    return folder


def put_settings(client, user, **body):
    return client.put(SETTINGS, headers=user["headers"],
                      json={"enabled": True, "duration_hours": 24, "scope": "full", **body})


def renewing_user(client, accounts, balance: str = "100.00", **choice) -> dict[str, Any]:
    user = accounts.signed_in()
    accounts.fund(user["id"], balance)
    response = put_settings(client, user, **choice)
    assert response.status_code == 200, response.get_json()
    return user


def owned_token(app, client, user, *, hours: int = 24, expires_in: timedelta | None = SOON, **values) -> dict:
    """A token bought through the API, then (straight in the database) activated so that it expires in
    `expires_in` (None: left unactivated), with any other column `values`."""
    response = client.post(PURCHASE, headers=user["headers"], json={"duration_hours": hours})
    assert response.status_code == 201, response.get_json()
    token = response.get_json()
    if expires_in is not None:
        values.update(activated_at=now() + expires_in - timedelta(hours=hours), expires_at=now() + expires_in)
    if values:
        with app.app_context():
            db.session.execute(sa.update(AccessToken).where(AccessToken.id == uuid.UUID(token["id"])).values(**values))
            db.session.commit()
    return token


def run_job(app) -> dict[str, int]:
    with app.app_context():
        try:
            return renew_expiring_tokens()
        finally:
            db.session.remove()


def tokens_of(app, user) -> list[AccessToken]:
    with app.app_context():
        rows = db.session.scalars(sa.select(AccessToken).where(AccessToken.user_id == uuid.UUID(user["id"]))
                                  .order_by(AccessToken.created_at)).all()
        db.session.expunge_all()
        return list(rows)


def replacements(app, user) -> list[AccessToken]:
    return [token for token in tokens_of(app, user) if token.source == "auto_renewal"]


def balance(client, user) -> str:
    return client.get("/api/v1/currency/balance", headers=user["headers"]).get_json()["balance"]


def emails(app, user, kind: str) -> list[EmailMessage]:
    with app.app_context():
        rows = db.session.scalars(sa.select(EmailMessage).where(EmailMessage.user_id == uuid.UUID(user["id"]),
                                                                EmailMessage.kind == kind)).all()
        db.session.expunge_all()
        return list(rows)


def delivered(app, mailbox: Path, user) -> list[Mail]:
    """What reached the user's mailbox, after doing what the "emails" workers do (in the embedded default the
    job already sent them inline)."""
    with app.app_context():
        for email_id in db.session.scalars(sa.select(EmailMessage.id).where(EmailMessage.status == "pending")).all():
            send_email(email_id)
    mails = [message_from_bytes(path.read_bytes(), policy=policy.default) for path in sorted(mailbox.glob("*.eml"))]
    return [mail for mail in mails if mail["To"] == user["email"]]


def sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


# --- the choice --------------------------------------------------------------------------------------------------

def test_a_user_who_never_chose_gets_the_defaults_off(client, accounts):
    user = accounts.signed_in()
    response = client.get(SETTINGS, headers=user["headers"])
    assert response.status_code == 200
    assert response.get_json() == DEFAULTS


def test_put_then_get_round_trip_with_the_cost_and_an_audit_row(app, client, accounts):
    user = accounts.signed_in()
    response = put_settings(client, user, duration_hours=168, scope="certificates_only")
    expected = {"enabled": True, "duration_hours": 168, "scope": "certificates_only", "cost_per_renewal": "100.00"}
    assert response.status_code == 200 and response.get_json() == expected
    assert client.get(SETTINGS, headers=user["headers"]).get_json() == expected
    assert put_settings(client, user, duration_hours=168, scope="certificates_only").get_json() == expected
    off = put_settings(client, user, enabled=False, duration_hours=720, scope="full").get_json()
    assert off == {"enabled": False, "duration_hours": 720, "scope": "full", "cost_per_renewal": "300.00"}
    assert client.get(SETTINGS, headers=user["headers"]).get_json() == off
    with app.app_context():
        audit = db.session.scalars(sa.select(AuditLog).where(AuditLog.action == "auto_renewal.updated")
                                   .order_by(AuditLog.created_at)).all()
        assert [(str(row.actor_id), row.resource_id, row.details) for row in audit] == [
            (user["id"], user["id"], {"before": {"enabled": False, "duration_hours": 24, "scope": "full"},
                                      "after": {"enabled": True, "duration_hours": 168, "scope": "certificates_only"}}),
            (user["id"], user["id"], {"before": {"enabled": True, "duration_hours": 168, "scope": "certificates_only"},
                                      "after": {"enabled": False, "duration_hours": 720, "scope": "full"}}),
        ]  # the repeated PUT changed nothing and is not audited


def test_each_user_sees_only_their_own_choice(client, accounts):
    renewing_user(client, accounts, duration_hours=720)
    other = accounts.signed_in()
    assert client.get(SETTINGS, headers=other["headers"]).get_json() == DEFAULTS


@pytest.mark.parametrize("body, field", [
    ({"enabled": True, "duration_hours": 2, "scope": "full"}, "duration_hours"),
    ({"enabled": True, "duration_hours": "24", "scope": "full"}, "duration_hours"),
    ({"enabled": True, "duration_hours": 24.5, "scope": "full"}, "duration_hours"),
    ({"enabled": True, "duration_hours": 24, "scope": "admin"}, "scope"),
    ({"enabled": "perhaps", "duration_hours": 24, "scope": "full"}, "enabled"),
    ({"enabled": True, "duration_hours": 24, "scope": "full", "cost_per_renewal": "0.01"}, "cost_per_renewal"),
    ({"enabled": True, "duration_hours": 24, "scope": "full", "user_id": str(uuid.uuid4())}, "user_id"),
    ({"duration_hours": 24, "scope": "full"}, "enabled"),
    ({"enabled": True, "scope": "full"}, "duration_hours"),
    ({"enabled": True, "duration_hours": 24}, "scope"),
])
def test_invalid_choices_are_422_and_change_nothing(client, accounts, body, field):
    user = accounts.signed_in()
    response = client.put(SETTINGS, headers=user["headers"], json=body)
    assert response.status_code == 422
    assert field in response.get_json()["errors"]
    assert client.get(SETTINGS, headers=user["headers"]).get_json() == DEFAULTS


def test_without_a_jwt_it_is_401(client):
    assert client.get(SETTINGS).status_code == 401
    response = client.put(SETTINGS, json={"enabled": True, "duration_hours": 24, "scope": "full"})
    assert response.status_code == 401 and response.get_json()["code"] == 401


def test_the_openapi_document_states_the_rules(client):
    operation = client.get("/openapi.json").get_json()["paths"][SETTINGS]["put"]
    assert "expire within 24 h" in operation["description"] and "e-mailed" in operation["description"]
    assert "Insufficient balance" in operation["description"]
    assert operation["security"] == [{"bearerAuth": []}]


# --- the job -----------------------------------------------------------------------------------------------------

def test_a_token_expiring_within_a_day_is_renewed_once(app, client, accounts, mailbox):
    user = renewing_user(client, accounts)
    old = owned_token(app, client, user)
    assert balance(client, user) == "82.00"

    assert run_job(app) == {**NOTHING, "renewed": 1}
    assert run_job(app) == NOTHING

    [new] = replacements(app, user)
    assert (new.duration_hours, new.scope, new.paid_znc, new.status) == (24, "full", Decimal("18.00"), "ready")
    assert new.activated_at is None and new.expires_at is None
    renewed_old = next(token for token in tokens_of(app, user) if str(token.id) == old["id"])
    assert renewed_old.renewed_at is not None and renewed_old.revoked_at is None
    assert balance(client, user) == "64.00"
    with app.app_context():
        entry = db.session.scalar(sa.select(Transaction).where(Transaction.id == new.purchase_transaction_id))
        assert (entry.transaction_type, entry.amount, entry.balance_after) == ("purchase", Decimal("-18.00"),
                                                                               Decimal("64.00"))
        assert entry.reference_type == "access_token" and entry.reference_id == str(new.id)
        assert ledger.verify()["ok"]
        [event] = db.session.scalars(sa.select(OutboxEvent).where(
            OutboxEvent.event_type == "token.purchased", OutboxEvent.payload["token_id"].as_string() == str(new.id)))
        assert event.payload == {"token_id": str(new.id), "duration_hours": 24, "scope": "full", "paid_znc": "18.00",
                                 "source": "auto_renewal"}
        actions = Counter(db.session.scalars(sa.select(AuditLog.action)))
        assert actions["token.purchased"] == 2 and actions["token.auto_renewed"] == 1

    [queued] = emails(app, user, "auto_renewal_done")
    assert queued.dedupe_key == f"auto_renewal:{old['id']}"
    [mail] = delivered(app, mailbox, user)
    assert mail["Subject"] == "Your Zenzefi access token was renewed"
    body = mail.get_content()
    secret = SECRET_LINE.search(body).group(1)
    assert sha256(secret) == new.token_hash and len(secret) == 64
    assert old["token_hint"] in body and "64.00 ZNC" in body
    [sent] = emails(app, user, "auto_renewal_done")
    assert sent.status == "sent" and sent.body_sealed is None  # the secret is not kept once sent


def test_while_it_cannot_be_sent_the_secret_waits_sealed_in_the_database(app, client, accounts, smtp_down):
    user = renewing_user(client, accounts)
    owned_token(app, client, user)
    run_job(app)
    [new] = replacements(app, user)
    [queued] = emails(app, user, "auto_renewal_done")
    assert queued.status == "pending" and new.token_hash not in queued.body_sealed
    with app.app_context():
        body = unseal(SEAL_PURPOSE, queued.body_sealed).decode()
    assert sha256(SECRET_LINE.search(body).group(1)) == new.token_hash


def test_the_replacement_works_at_the_proxy(app, client, accounts, mailbox):
    user = renewing_user(client, accounts)
    owned_token(app, client, user)
    run_job(app)
    [mail] = delivered(app, mailbox, user)
    secret = SECRET_LINE.search(mail.get_content()).group(1)
    status = proxy_status(client, secret)
    assert status.status_code == 200
    assert status.get_json()["status"] == "ready" and status.get_json()["user_id"] == user["id"]


def test_only_due_tokens_of_opted_in_active_users_are_renewed(app, client, accounts):
    user = renewing_user(client, accounts, balance="1000.00")
    owned_token(app, client, user, expires_in=None)  # never activated
    owned_token(app, client, user, revoked_at=now())
    owned_token(app, client, user, expires_in=timedelta(minutes=-1))  # already expired
    later = owned_token(app, client, user, expires_in=timedelta(hours=25))
    owned_token(app, client, user, renewed_at=now() - timedelta(hours=1))  # renewed by an earlier run
    switched_off = renewing_user(client, accounts)
    owned_token(app, client, switched_off)
    assert put_settings(client, switched_off, enabled=False).status_code == 200
    never_chose = accounts.signed_in()
    accounts.fund(never_chose["id"], "100.00")
    owned_token(app, client, never_chose)
    deactivated = renewing_user(client, accounts)
    owned_token(app, client, deactivated)
    accounts.set_flags(deactivated["id"], is_active=False)
    balances = {u["id"]: balance(client, u) for u in (user, switched_off, never_chose)}

    assert run_job(app) == NOTHING
    for someone in (user, switched_off, never_chose, deactivated):
        assert replacements(app, someone) == []
    assert {u["id"]: balance(client, u) for u in (user, switched_off, never_chose)} == balances

    with travel(timedelta(hours=1, seconds=1)):  # now the 25-hour token expires within 24 h
        assert run_job(app) == {**NOTHING, "renewed": 1}
    renewed = {str(token.id) for token in tokens_of(app, user) if token.renewed_at is not None}
    assert later["id"] in renewed


def test_a_gifted_token_is_never_renewed(app, client, accounts):
    user = renewing_user(client, accounts)
    gifted = owned_token(app, client, user, expires_in=None)
    response = client.post(f"/api/v1/tokens/{gifted['id']}/gift", headers=user["headers"],
                           json={"recipient_email": "friend@example.com"})
    assert response.status_code == 200, response.get_json()
    kept = owned_token(app, client, user, expires_in=None)
    with app.app_context():  # the recipient (and the giver, with the other token) started using them
        db.session.execute(sa.update(AccessToken).where(AccessToken.id.in_([uuid.UUID(gifted["id"]),
                                                                             uuid.UUID(kept["id"])]))
                           .values(activated_at=now() + SOON - timedelta(hours=24), expires_at=now() + SOON))
        db.session.commit()

    assert run_job(app) == {**NOTHING, "renewed": 1}
    renewed = {str(token.id) for token in tokens_of(app, user) if token.renewed_at is not None}
    assert renewed == {kept["id"]} and len(replacements(app, user)) == 1
    assert balance(client, user) == "46.00"  # 100 − 2 × 18 bought − 18 for the one renewal


def test_the_replacement_follows_the_current_choice_and_the_purchase_rules(app, client, accounts):
    referrer = accounts.signed_in()
    user = accounts.signed_in(referral_code=referrer["referral_code"])
    accounts.fund(user["id"], "310.00")
    assert put_settings(client, user, duration_hours=720, scope="certificates_only").status_code == 200
    owned_token(app, client, user, hours=1, expires_in=timedelta(minutes=30))  # 1.00: no referral bonus

    assert run_job(app)["renewed"] == 1
    [new] = replacements(app, user)
    assert (new.duration_hours, new.scope, new.paid_znc) == (720, "certificates_only", Decimal("300.00"))
    assert balance(client, user) == "9.00"
    assert balance(client, referrer) == "30.00"  # 10 % of the first purchase over 100.00
    with app.app_context():
        low = db.session.scalars(sa.select(OutboxEvent.payload).where(OutboxEvent.event_type == "balance.low")).all()
        assert low == [{"balance": "9.00"}]
        assert ledger.verify()["ok"]


def test_a_short_balance_charges_nothing_turns_auto_renewal_off_and_emails_once(app, client, accounts, mailbox):
    user = renewing_user(client, accounts, balance="23.00")
    old = owned_token(app, client, user)
    assert balance(client, user) == "5.00"

    assert run_job(app) == {**NOTHING, "failed": 1}
    assert run_job(app) == NOTHING
    with travel(timedelta(hours=1)):
        assert run_job(app) == NOTHING

    assert replacements(app, user) == []
    assert balance(client, user) == "5.00"
    assert client.get(SETTINGS, headers=user["headers"]).get_json()["enabled"] is False
    [token] = tokens_of(app, user)
    assert token.renewed_at is None  # it was not renewed; with auto-renewal off it is no longer a candidate
    assert len(emails(app, user, "auto_renewal_failed")) == 1
    [mail] = delivered(app, mailbox, user)
    assert mail["Subject"] == "Auto-renewal of your Zenzefi access token failed"
    assert "18.00 ZNC" in mail.get_content() and "5.00 ZNC" in mail.get_content()
    assert old["token_hint"] in mail.get_content()
    with app.app_context():
        assert db.session.scalar(sa.select(AuditLog).where(AuditLog.action == "auto_renewal.failed")) is not None
        assert ledger.verify()["ok"]

    # Topped up and turned on again while the token is still due: the next run renews it.
    accounts.fund(user["id"], "20.00")
    assert put_settings(client, user).status_code == 200
    assert run_job(app) == {**NOTHING, "renewed": 1}
    assert len(replacements(app, user)) == 1 and balance(client, user) == "7.00"


def test_a_second_failure_after_turning_it_on_again_is_emailed_again(app, client, accounts):
    user = renewing_user(client, accounts, balance="23.00")
    owned_token(app, client, user)
    assert run_job(app)["failed"] == 1
    with travel(timedelta(seconds=1)):
        assert put_settings(client, user).status_code == 200
        assert run_job(app)["failed"] == 1
    assert len(emails(app, user, "auto_renewal_failed")) == 2


def test_with_two_due_tokens_and_money_for_one_the_sooner_is_renewed(app, client, accounts):
    user = renewing_user(client, accounts, balance="54.00")
    first = owned_token(app, client, user, expires_in=timedelta(hours=2))
    owned_token(app, client, user, expires_in=timedelta(hours=3))
    assert run_job(app) == {**NOTHING, "renewed": 1, "failed": 1}
    renewed = [str(token.id) for token in tokens_of(app, user) if token.renewed_at is not None]
    assert renewed == [first["id"]] and balance(client, user) == "0.00"
    assert client.get(SETTINGS, headers=user["headers"]).get_json()["enabled"] is False


def test_an_opted_out_user_is_still_renewed_and_still_gets_the_secret(app, client, accounts, mailbox):
    user = renewing_user(client, accounts)
    accounts.set_flags(user["id"], email_notifications=False)
    owned_token(app, client, user)
    assert run_job(app)["renewed"] == 1
    [new] = replacements(app, user)
    [mail] = delivered(app, mailbox, user)  # the receipt, and the only place the secret is shown
    assert sha256(SECRET_LINE.search(mail.get_content()).group(1)) == new.token_hash


def test_an_opted_out_user_gets_no_failure_email(app, client, accounts):
    user = renewing_user(client, accounts, balance="20.00")
    accounts.set_flags(user["id"], email_notifications=False)
    owned_token(app, client, user)
    assert run_job(app)["failed"] == 1
    assert emails(app, user, "auto_renewal_failed") == []
    assert client.get(SETTINGS, headers=user["headers"]).get_json()["enabled"] is False


def test_more_due_tokens_than_one_batch_even_with_equal_expiries(app, client, accounts, monkeypatch):
    monkeypatch.setattr("zenzefi_backend.tokens.renewal.BATCH_SIZE", 2)
    expires_at = now() + SOON
    users = [renewing_user(client, accounts, balance="200.00") for _ in range(2)]
    for user in users:
        for _ in range(3):
            owned_token(app, client, user, expires_in=None, activated_at=expires_at - timedelta(hours=24),
                        expires_at=expires_at)
    assert run_job(app) == {**NOTHING, "renewed": 6}
    assert [len(replacements(app, user)) for user in users] == [3, 3]


def test_the_rq_job_returns_the_counts(app, client, accounts):
    user = renewing_user(client, accounts)
    owned_token(app, client, user)
    with app.app_context():
        assert auto_renewal_job() == {**NOTHING, "renewed": 1}


@pytest.mark.postgres
def test_several_workers_at_once_renew_each_token_once(app, backends, client, accounts):
    if not backends.is_postgres:
        pytest.skip(POSTGRES_ONLY_REASON)
    for _ in range(3):
        users = [renewing_user(client, accounts) for _ in range(3)]
        due = [owned_token(app, client, user, expires_in=timedelta(hours=hours)) for user in users for hours in (2, 3)]
        results = race(app, [lambda _client: run_job(app)] * 8)
        assert sum(result["renewed"] for result in results) == len(due)
        assert sum(result["failed"] + result["errors"] for result in results) == 0
        for user in users:
            assert len(replacements(app, user)) == 2
            assert balance(client, user) == "28.00"  # 100 − 2 × 18 bought − 2 × 18 renewed
            assert len(emails(app, user, "auto_renewal_done")) == 2
        with app.app_context():
            assert ledger.verify()["ok"]
            renewals = Counter(str(user_id) for user_id in db.session.scalars(
                sa.select(Transaction.user_id).where(Transaction.description.like("Auto-renewal%"))))
        assert all(renewals[user["id"]] == 2 for user in users)
