"""Gifting a token (SPEC §3.9): rotate the secret, e-mail the new one to the recipient, no refund afterwards."""
from __future__ import annotations

import hashlib
import re
import uuid
from collections import Counter
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from tests.fixtures.actions import buy_token, proxy_request, proxy_status
from tests.fixtures.mailbox import send_queued_emails
from tests.fixtures.race import race
from tests.support import POSTGRES_ONLY_REASON
from zenzefi_backend.audit.models import AuditLog
from zenzefi_backend.clock import now, travel
from zenzefi_backend.extensions import db
from zenzefi_backend.ledger import services as ledger
from zenzefi_backend.ledger.models import Transaction
from zenzefi_backend.notifications.email import SEAL_PURPOSE
from zenzefi_backend.notifications.models import EmailMessage
from zenzefi_backend.proxy.cache import redis_state
from zenzefi_backend.proxy.models import ProxySession
from zenzefi_backend.sealing import unseal
from zenzefi_backend.tokens.models import AccessToken

FRIEND = "friend@example.com"
SECRET_LINE = re.compile(r"Access token: (\S+)")
DAY = 24 * 3600


@pytest.fixture
def giver(accounts):
    return accounts.funded("1000.00")


def gift(client, user, token_id: str, recipient: str = FRIEND, **extra):
    return client.post(f"/api/v1/tokens/{token_id}/gift", headers=user["headers"],
                       json={"recipient_email": recipient, **extra})


def proxied(client, secret: str, device: str):
    """A forwarded request; the test upstream (127.0.0.1:9) is unreachable, so an admitted one is a 502."""
    return proxy_request(client, "GET", "certificates/filter", token=secret, device=device)


def sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def stored(app, token_id: str) -> AccessToken:
    with app.app_context():
        token = db.session.get(AccessToken, uuid.UUID(token_id))
        db.session.expunge(token)
        return token


def set_columns(app, token_id: str, **values) -> None:
    with app.app_context():
        db.session.execute(sa.update(AccessToken).where(AccessToken.id == uuid.UUID(token_id)).values(**values))
        db.session.commit()


def mails_to(app, mailbox_files, address: str) -> list:
    """What reached `address`, after doing what the "emails" workers do (inline in the embedded default)."""
    with app.app_context():
        send_queued_emails()
    return [mail for mail in mailbox_files() if mail["To"] == address]


def gift_emails(app) -> list[EmailMessage]:
    with app.app_context():
        rows = db.session.scalars(sa.select(EmailMessage).where(EmailMessage.kind == "gift_received")).all()
        db.session.expunge_all()
        return list(rows)


def balance_and_ledger(app, client, user) -> tuple[str, int]:
    balance = client.get("/api/v1/currency/balance", headers=user["headers"]).get_json()["balance"]
    with app.app_context():
        entries = db.session.scalar(sa.select(sa.func.count()).select_from(Transaction)
                                    .where(Transaction.user_id == uuid.UUID(user["id"])))
    return balance, entries


# --- the gift ----------------------------------------------------------------------------------------------------

def test_a_gift_rotates_the_secret_and_only_the_recipient_gets_the_new_one(app, client, giver, accounts,
                                                                           mailbox_files):
    accounts.set_flags(giver["id"], email_notifications=False)  # gifts are mailed whatever the giver chose
    token = buy_token(client, giver, hours=24)
    old = token["token"]
    assert proxy_status(client, old).status_code == 200
    assert proxied(client, old, "giver-device-01").status_code == 502  # fills the proxy cache, holds the device
    with app.app_context():
        assert redis_state.cached_token(sha256(old)) is not None  # the old secret is cached as valid

    response = gift(client, giver, token["id"], "Friend@Example.COM")

    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert set(body) == {"token_id", "recipient_email", "gifted_at"}
    assert body["token_id"] == token["id"] and body["recipient_email"] == FRIEND
    assert abs(now() - datetime.fromisoformat(body["gifted_at"])) < timedelta(minutes=1)
    # The old secret is refused at once, from the cache and from the database.
    assert proxy_status(client, old).status_code == 401
    assert proxied(client, old, "giver-device-01").status_code == 401

    [mail] = mails_to(app, mailbox_files, FRIEND)
    assert mail["Subject"] == f"{giver['username']} sent you a Zenzefi access token"
    new = SECRET_LINE.search(mail.get_content()).group(1)
    assert len(new) == 64 and new != old and new not in response.get_data(as_text=True)
    assert mails_to(app, mailbox_files, giver["email"]) == []

    works = proxy_status(client, new)
    assert works.status_code == 200
    assert works.get_json()["token_id"] == token["id"] and works.get_json()["status"] == "ready"
    assert works.get_json()["user_id"] == giver["id"]  # still the giver's token
    # The giver's device was released: the recipient's device is admitted (502: the upstream is unreachable).
    assert proxied(client, new, "recipient-device-01").status_code == 502

    row = stored(app, token["id"])
    assert row.user_id == uuid.UUID(giver["id"]) and row.token_hash == sha256(new)
    assert row.token_hint == f"{new[:6]}...{new[-4:]}" and row.gifted_to_email == FRIEND
    assert new not in [str(getattr(row, column.key)) for column in sa.inspect(AccessToken).columns]
    [sent] = gift_emails(app)
    assert sent.to_address == FRIEND and sent.status == "sent" and sent.body_sealed is None
    with app.app_context():
        [session] = db.session.scalars(sa.select(ProxySession).where(ProxySession.device_id == "giver-device-01"))
        assert not session.is_active and session.ended_at is not None

    shown = client.get(f"/api/v1/tokens/{token['id']}", headers=giver["headers"]).get_json()
    assert shown["gifted_to_email"] == FRIEND and shown["gifted_at"] == body["gifted_at"]
    assert shown["token_hint"] == row.token_hint and "token" not in shown and shown["status"] == "ready"
    listed = client.get("/api/v1/tokens/my-tokens", headers=giver["headers"]).get_json()["items"]
    assert [(item["id"], item["gifted_to_email"]) for item in listed] == [(token["id"], FRIEND)]


def test_a_token_never_gifted_shows_null_gift_fields(client, giver):
    token = buy_token(client, giver, hours=24)
    shown = client.get(f"/api/v1/tokens/{token['id']}", headers=giver["headers"]).get_json()
    assert shown["gifted_to_email"] is None and shown["gifted_at"] is None


def test_until_it_is_sent_the_new_secret_waits_sealed_in_the_database(app, client, giver, smtp_down):
    token = buy_token(client, giver, hours=24)
    assert gift(client, giver, token["id"]).status_code == 200
    with app.app_context():
        send_queued_emails()
    [queued] = gift_emails(app)
    row = stored(app, token["id"])
    assert queued.status == "pending" and queued.body_sealed and row.token_hash not in queued.body_sealed
    with app.app_context():
        body = unseal(SEAL_PURPOSE, queued.body_sealed).decode()
    new = SECRET_LINE.search(body).group(1)
    assert sha256(new) == row.token_hash and new not in queued.body_sealed


def test_gifting_to_your_own_address_is_allowed(app, client, giver, mailbox_files):
    token = buy_token(client, giver, hours=24)
    response = gift(client, giver, token["id"], giver["email"].upper())
    assert response.status_code == 200 and response.get_json()["recipient_email"] == giver["email"]
    [mail] = mails_to(app, mailbox_files, giver["email"])
    assert proxy_status(client, SECRET_LINE.search(mail.get_content()).group(1)).status_code == 200
    assert proxy_status(client, token["token"]).status_code == 401


def test_the_gift_is_audited(app, client, giver):
    token = buy_token(client, giver, hours=24)
    assert gift(client, giver, token["id"]).status_code == 200
    with app.app_context():
        [entry] = db.session.scalars(sa.select(AuditLog).where(AuditLog.action == "token.gifted"))
        assert entry.actor_id == uuid.UUID(giver["id"])
        assert (entry.resource_type, entry.resource_id) == ("access_token", token["id"])
        assert entry.details == {"recipient_email": FRIEND}


def test_the_openapi_document_states_the_decisions(client):
    operation = client.get("/openapi.json").get_json()["paths"]["/api/v1/tokens/{token_id}/gift"]["post"]
    assert "Your own address is allowed" in operation["description"]
    assert "10 gifts in any rolling 24 h" in operation["description"] and "rotated" in operation["description"]
    assert {"200", "401", "404", "409", "422", "429"} <= set(operation["responses"])
    assert operation["security"] == [{"bearerAuth": []}]
    result = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
    document = client.get("/openapi.json").get_json()
    assert set(document["components"]["schemas"][result]["properties"]) == {"token_id", "recipient_email",
                                                                             "gifted_at"}


# --- refused -----------------------------------------------------------------------------------------------------

def test_another_users_token_and_an_unknown_id_are_404(app, client, giver, accounts):
    token = buy_token(client, giver, hours=24)
    intruder = accounts.signed_in()
    assert gift(client, intruder, token["id"]).status_code == 404
    assert gift(client, giver, str(uuid.uuid4())).status_code == 404
    assert proxy_status(client, token["token"]).status_code == 200
    assert stored(app, token["id"]).gifted_at is None and gift_emails(app) == []


def _activated(app, token):
    set_columns(app, token["id"], activated_at=now() - timedelta(hours=1), expires_at=now() + timedelta(hours=23))


def _expired(app, token):
    set_columns(app, token["id"], activated_at=now() - timedelta(hours=25), expires_at=now() - timedelta(hours=1))


def _revoked(client, giver, token):
    assert client.delete(f"/api/v1/tokens/{token['id']}", headers=giver["headers"]).status_code == 200


def _gifted(client, giver, token):
    assert gift(client, giver, token["id"], "first@example.com").status_code == 200


@pytest.mark.parametrize("make, reason", [
    (lambda app, client, giver, token: _activated(app, token), "already used"),
    (lambda app, client, giver, token: _expired(app, token), "expired"),
    (lambda app, client, giver, token: _revoked(client, giver, token), "revoked"),
    (lambda app, client, giver, token: _gifted(client, giver, token), "already gifted"),
], ids=["activated", "expired", "revoked", "already-gifted"])
def test_only_a_never_used_token_can_be_gifted(app, client, giver, make, reason):
    token = buy_token(client, giver, hours=24)
    make(app, client, giver, token)
    before = stored(app, token["id"])
    emails_before = len(gift_emails(app))

    response = gift(client, giver, token["id"])

    assert response.status_code == 409
    assert reason in response.get_json()["message"]
    after = stored(app, token["id"])
    assert (after.token_hash, after.gifted_to_email, after.gifted_at) == (before.token_hash, before.gifted_to_email,
                                                                          before.gifted_at)
    assert len(gift_emails(app)) == emails_before


@pytest.mark.parametrize("body, field", [
    ({"recipient_email": "not-an-e-mail"}, "recipient_email"),
    ({"recipient_email": "someone@"}, "recipient_email"),
    ({"recipient_email": ""}, "recipient_email"),
    ({"recipient_email": 42}, "recipient_email"),
    ({"recipient_email": None}, "recipient_email"),
    ({"recipient_email": "a" * 250 + "@example.com"}, "recipient_email"),
    ({}, "recipient_email"),
    ({"recipient_email": FRIEND, "user_id": str(uuid.uuid4())}, "user_id"),
])
def test_invalid_bodies_are_422_and_change_nothing(app, client, giver, body, field):
    token = buy_token(client, giver, hours=24)
    response = client.post(f"/api/v1/tokens/{token['id']}/gift", headers=giver["headers"], json=body)
    assert response.status_code == 422
    assert field in response.get_json()["errors"]
    assert stored(app, token["id"]).gifted_at is None and proxy_status(client, token["token"]).status_code == 200


def test_without_a_jwt_it_is_401(client, giver):
    token = buy_token(client, giver, hours=24)
    response = client.post(f"/api/v1/tokens/{token['id']}/gift", json={"recipient_email": FRIEND})
    assert response.status_code == 401 and response.get_json()["code"] == 401


# --- after the gift ----------------------------------------------------------------------------------------------

def test_a_gifted_token_cannot_be_revoked_for_a_refund_but_an_admin_can_revoke_it(app, client, giver, accounts,
                                                                                  mailbox_files):
    token = buy_token(client, giver, hours=24)
    assert gift(client, giver, token["id"]).status_code == 200
    [mail] = mails_to(app, mailbox_files, FRIEND)
    new = SECRET_LINE.search(mail.get_content()).group(1)
    before = balance_and_ledger(app, client, giver)

    refused = client.delete(f"/api/v1/tokens/{token['id']}", headers=giver["headers"])

    assert refused.status_code == 409 and "gift" in refused.get_json()["message"]
    assert balance_and_ledger(app, client, giver) == before == ("982.00", 2)
    assert stored(app, token["id"]).revoked_at is None and proxy_status(client, new).status_code == 200
    with app.app_context():
        assert ledger.verify()["ok"]

    admin = accounts.signed_in(superuser=True)
    forced = client.delete(f"/api/v1/admin/tokens/{token['id']}", headers=admin["headers"])
    assert forced.status_code == 200 and forced.get_json()["status"] == "revoked"
    assert proxy_status(client, new).status_code == 401
    assert balance_and_ledger(app, client, giver) == before


# --- the daily limit ---------------------------------------------------------------------------------------------

def test_the_eleventh_gift_within_24_hours_is_429_until_the_oldest_leaves_the_window(app, client, giver):
    tokens = [buy_token(client, giver, hours=1) for _ in range(12)]
    assert gift(client, giver, tokens[0]["id"]).status_code == 200
    with travel(timedelta(hours=2)):
        for token in tokens[1:10]:
            assert gift(client, giver, token["id"]).status_code == 200

        limited = gift(client, giver, tokens[10]["id"])

        assert limited.status_code == 429
        body = limited.get_json()
        retry_after = int(limited.headers["Retry-After"])
        assert DAY - 2 * 3600 - 60 <= retry_after <= DAY - 2 * 3600  # until the first gift is 24 h old
        # flask-limiter rewrites the header of every limited route, truncating it by up to a second.
        assert body["code"] == 429 and body["retry_after"] - 1 <= retry_after <= body["retry_after"]
        assert "10" in body["message"]
        assert stored(app, tokens[10]["id"]).gifted_at is None
        assert proxy_status(client, tokens[10]["token"]).status_code == 200

    with travel(timedelta(hours=24, seconds=1)):  # the first gift left the window; the nine others did not
        assert gift(client, giver, tokens[10]["id"]).status_code == 200
        again = gift(client, giver, tokens[11]["id"])
        assert again.status_code == 429
        assert 2 * 3600 - 60 <= int(again.headers["Retry-After"]) <= 2 * 3600
    assert len(gift_emails(app)) == 11


def test_the_limit_is_per_user(client, giver, accounts):
    other = accounts.signed_in()
    accounts.fund(other["id"], "100.00")
    for _ in range(10):
        assert gift(client, giver, buy_token(client, giver, hours=1)["id"]).status_code == 200
    assert gift(client, other, buy_token(client, other, hours=1)["id"]).status_code == 200


# --- concurrency (PostgreSQL) ------------------------------------------------------------------------------------

@pytest.mark.postgres
def test_twelve_concurrent_gifts_of_one_user_exactly_ten_succeed(app, backends, client, giver):
    if not backends.is_postgres:
        pytest.skip(POSTGRES_ONLY_REASON)
    tokens = [buy_token(client, giver, hours=1) for _ in range(12)]

    def gifting(token):
        return lambda racer: gift(racer, giver, token["id"], f"friend-{token['id'][:8]}@example.com").status_code

    codes = Counter(race(app, [gifting(token) for token in tokens]))

    assert codes == {200: 10, 429: 2}
    with app.app_context():
        gifted = db.session.scalar(sa.select(sa.func.count()).select_from(AccessToken)
                                   .where(AccessToken.gifted_at.is_not(None)))
    assert gifted == 10 and len(gift_emails(app)) == 10


@pytest.mark.postgres
def test_ten_concurrent_gifts_of_the_same_token_exactly_one_succeeds(app, backends, client, giver, mailbox_files):
    if not backends.is_postgres:
        pytest.skip(POSTGRES_ONLY_REASON)
    token = buy_token(client, giver, hours=24)
    recipients = [f"friend{index}@example.com" for index in range(10)]

    codes = race(app, [lambda racer, to=to: gift(racer, giver, token["id"], to).status_code for to in recipients])

    assert Counter(codes) == {200: 1, 409: 9}
    winner = recipients[codes.index(200)]
    row = stored(app, token["id"])
    assert row.gifted_to_email == winner
    [queued] = gift_emails(app)
    assert queued.to_address == winner
    [mail] = mails_to(app, mailbox_files, winner)
    new = SECRET_LINE.search(mail.get_content()).group(1)
    assert sha256(new) == row.token_hash and proxy_status(client, new).status_code == 200
    assert proxy_status(client, token["token"]).status_code == 401
