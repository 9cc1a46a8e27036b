"""The hourly "expires within 24 h" e-mail: once per token, only for tokens that really expire soon."""
from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa

from tests.fixtures.mailbox import send_queued_emails
from tests.fixtures.race import race_in_app_contexts
from tests.jobs.helpers import buy_tokens
from tests.support import POSTGRES_ONLY_REASON
from zenzefi_backend.clock import now
from zenzefi_backend.extensions import db
from zenzefi_backend.notifications.models import EmailMessage
from zenzefi_backend.notifications.reminders import remind_expiring_tokens
from zenzefi_backend.tokens.models import AccessToken, AutoRenewal


def set_token(app, token: dict, *, expires_in: timedelta | None, **values) -> None:
    with app.app_context():
        if expires_in is not None:
            values.update(activated_at=now() - timedelta(minutes=5), expires_at=now() + expires_in)
        db.session.execute(sa.update(AccessToken).where(AccessToken.id == uuid.UUID(token["id"])).values(**values))
        db.session.commit()


def reminders(app) -> dict[str, int]:
    """Queued reminder e-mails by token id."""
    with app.app_context():
        keys = db.session.scalars(sa.select(EmailMessage.dedupe_key).where(EmailMessage.kind == "token_expiring"))
        found: dict[str, int] = {}
        for key in keys:
            token_id = key.removeprefix("token_expiring:")
            found[token_id] = found.get(token_id, 0) + 1
        return found


def test_each_token_expiring_within_a_day_is_reminded_once(app, client, accounts, mailbox_files):
    soon, later, idle, revoked, past = buy_tokens(client, accounts, 5)
    set_token(app, soon, expires_in=timedelta(hours=23))
    set_token(app, later, expires_in=timedelta(hours=25))
    set_token(app, revoked, expires_in=timedelta(hours=2), revoked_at=now())
    set_token(app, past, expires_in=timedelta(minutes=-1))
    with app.app_context():
        assert remind_expiring_tokens() == 1
        assert remind_expiring_tokens() == 0
        send_queued_emails()
    assert reminders(app) == {soon["id"]: 1}
    [mail] = mailbox_files()
    assert "expires at" in mail.get_content() and soon["secret"][:6] in mail.get_content()


def test_a_user_who_opted_out_is_not_reminded_and_not_asked_again(app, client, accounts):
    [token] = buy_tokens(client, accounts, 1)
    accounts.set_flags(token["user_id"], email_notifications=False)
    set_token(app, token, expires_in=timedelta(hours=3))
    with app.app_context():
        assert remind_expiring_tokens() == 1
        reminded_at = db.session.get(AccessToken, uuid.UUID(token["id"])).expiry_reminded_at
    assert reminders(app) == {}
    assert reminded_at is not None


def test_users_with_auto_renewal_get_the_renewal_email_instead(app, client, accounts):
    [token] = buy_tokens(client, accounts, 1)
    set_token(app, token, expires_in=timedelta(hours=3))
    with app.app_context():
        db.session.add(AutoRenewal(user_id=uuid.UUID(token["user_id"]), enabled=True, duration_hours=1,
                                   scope="full"))
        db.session.commit()
        assert remind_expiring_tokens() == 0


def test_gifted_tokens_are_not_reminded(app, client, accounts):
    [token] = buy_tokens(client, accounts, 1)
    set_token(app, token, expires_in=timedelta(hours=3), gifted_to_email="friend@example.com", gifted_at=now())
    with app.app_context():
        assert remind_expiring_tokens() == 0


def test_deactivated_users_are_not_reminded(app, client, accounts):
    [token] = buy_tokens(client, accounts, 1)
    set_token(app, token, expires_in=timedelta(hours=3))
    accounts.set_flags(token["user_id"], is_active=False)
    with app.app_context():
        assert remind_expiring_tokens() == 0


def test_two_workers_at_once_remind_each_token_once(app, backends, client, accounts):
    if not backends.is_postgres:
        pytest.skip(POSTGRES_ONLY_REASON)
    tokens = buy_tokens(client, accounts, 6)
    for token in tokens:
        set_token(app, token, expires_in=timedelta(hours=2))
    results = race_in_app_contexts(app, remind_expiring_tokens, threads=4)
    assert sum(results) == 6
    assert reminders(app) == {token["id"]: 1 for token in tokens}
