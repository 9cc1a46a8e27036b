"""E-mail: queued in the caller's transaction, sealed at rest, sent once over SMTP (or as `.eml`), retried."""
from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa

from tests.fixtures.mailbox import RECEIPT
from tests.support import POSTGRES_ONLY_REASON, SmtpSink
from zenzefi_backend import clock, metrics
from zenzefi_backend.extensions import db
from zenzefi_backend.notifications.email import (
    RETRY_DELAYS,
    purge_sent_emails,
    queue_email,
    send_email,
)
from zenzefi_backend.notifications.models import EmailMessage

GIFT = {"sender_username": "ada", "scope": "full", "duration_hours": 24, "token": "SECRET-TOKEN-abc123"}


def queue(kind: str = "payment_receipt", context: dict | None = None, **options) -> uuid.UUID:
    message = queue_email(kind, "ada@example.com", context or RECEIPT, **options)
    assert message is not None
    db.session.commit()
    return message.id


def sent_count(kind: str) -> float:
    return metrics.emails_sent.labels(kind=kind)._value.get()


def test_without_smtp_an_email_is_written_as_an_eml_file(app_ctx, mailbox, mailbox_files):
    before = sent_count("payment_receipt")
    email_id = queue()
    assert send_email(email_id) == "sent"
    [mail] = mailbox_files()
    assert mail["To"] == "ada@example.com"
    assert mail["From"] == "Zenzefi <no-reply@example.com>"
    assert mail["Subject"] == "Receipt: 50.00 ZNC added to your balance"
    assert "Balance:   60.00 ZNC" in mail.get_content()
    row = db.session.get(EmailMessage, email_id)
    assert (row.status, row.attempts, row.body_sealed) == ("sent", 1, None)
    assert sent_count("payment_receipt") == before + 1
    assert not list(mailbox.glob(".*.part"))


def test_a_token_secret_in_an_email_is_never_stored_in_clear(app_ctx, mailbox):
    email_id = queue("gift_received", GIFT)
    raw = db.session.execute(sa.text("SELECT body_sealed FROM email_messages")).scalar_one()
    assert "SECRET-TOKEN-abc123" not in raw
    send_email(email_id)
    assert "SECRET-TOKEN-abc123" in next(mailbox.glob("*.eml")).read_text()
    assert db.session.execute(sa.text("SELECT body_sealed FROM email_messages")).scalar_one() is None


def test_a_dedupe_key_queues_an_email_once(app_ctx):
    queue(dedupe_key="token_expiring:1")
    assert queue_email("payment_receipt", "ada@example.com", RECEIPT, dedupe_key="token_expiring:1") is None
    db.session.commit()
    assert db.session.scalar(sa.select(sa.func.count()).select_from(EmailMessage)) == 1


def test_opting_out_stops_notifications_but_not_receipts_or_gifts(app_ctx):
    context = {"username": "ada", "balance": "5.00", "threshold": "10.00"}
    assert queue_email("balance_low", "ada@example.com", context, opted_in=False) is None
    assert queue_email("payment_receipt", "ada@example.com", RECEIPT, opted_in=False) is not None
    assert queue_email("gift_received", "bob@example.com", GIFT, opted_in=False) is not None


def test_a_template_missing_a_value_queues_nothing(app_ctx):
    with pytest.raises(KeyError):
        queue_email("payment_receipt", "ada@example.com", {"username": "ada"})
    db.session.rollback()
    assert db.session.scalar(sa.select(sa.func.count()).select_from(EmailMessage)) == 0


def test_an_email_goes_out_over_smtp(app_ctx, smtp):
    assert send_email(queue()) == "sent"
    [mail] = smtp.messages
    assert mail["To"] == "ada@example.com"
    assert mail["Subject"] == "Receipt: 50.00 ZNC added to your balance"
    assert mail["Message-ID"]


def test_smtp_down_retries_with_backoff_then_gives_up(app_ctx, smtp_down):
    email_id = queue()
    elapsed = timedelta(0)
    for attempt, delay in enumerate(RETRY_DELAYS, start=1):
        with clock.travel(elapsed):
            assert send_email(email_id).startswith("failed; retry in")
            assert send_email(email_id) == "nothing to do: not due yet, or another worker is attempting it"
        row = db.session.get(EmailMessage, email_id)
        db.session.refresh(row)
        assert (row.status, row.attempts) == ("pending", attempt)
        assert "ConnectionRefusedError" in row.last_error
        elapsed += delay + timedelta(seconds=1)
    with clock.travel(elapsed):
        assert send_email(email_id) == "failed for good"
    db.session.refresh(row)
    assert (row.status, row.attempts, row.body_sealed) == ("failed", len(RETRY_DELAYS) + 1, None)


def test_the_retry_is_sent_once_smtp_is_back(app, app_ctx, smtp_down, monkeypatch):
    email_id = queue()
    send_email(email_id)
    with SmtpSink() as sink, clock.travel(RETRY_DELAYS[0]):
        monkeypatch.setitem(app.config, "SMTP_PORT", sink.port)
        assert send_email(email_id) == "sent"
        assert len(sink.messages) == 1


def test_a_permanent_refusal_is_not_retried(app_ctx, smtp):
    smtp.refuse = "550 5.1.1 No such user"
    email_id = queue()
    assert send_email(email_id) == "failed for good"
    row = db.session.get(EmailMessage, email_id)
    assert (row.status, row.last_error) == ("failed", "SMTP 550")


def test_purge_forgets_old_finished_emails_only(app_ctx):
    sent, pending = queue(), queue()
    send_email(sent)
    with clock.travel(timedelta(days=31)):
        assert purge_sent_emails(clock.now() - timedelta(days=30)) == 1
    assert db.session.get(EmailMessage, sent) is None
    assert db.session.get(EmailMessage, pending) is not None


def test_two_workers_sending_one_email_at_once_send_it_once(app, backends, smtp):
    if not backends.is_postgres:
        pytest.skip(POSTGRES_ONLY_REASON)
    from tests.fixtures.race import race_in_app_contexts

    with app.app_context():
        email_id = queue()
    results = race_in_app_contexts(app, lambda: send_email(email_id), threads=8)
    assert results.count("sent") == 1
    assert len(smtp.messages) == 1
