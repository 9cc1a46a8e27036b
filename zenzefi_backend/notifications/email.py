"""E-mail: queued as rows in the caller's transaction, sent by RQ jobs over SMTP (or as `.eml` files).

Claimed, retried, enqueued and purged by the delivery mechanism it shares with webhooks (delivery.py): sent, then
marked sent (waiting for a database that is away for a moment, `delivery.record_answer`) — at least once: a worker
that dies between the SMTP answer and the commit sends it again after the lease.
"""
from __future__ import annotations

import logging
import smtplib
import ssl
import uuid
from datetime import datetime, timedelta
from email.message import EmailMessage as MimeMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.exc import IntegrityError

from ..clock import now
from ..database import db
from ..metrics import count, emails_sent
from ..sealing import seal, unseal
from . import delivery
from .models import EmailMessage
from .templates import TEMPLATES

log = logging.getLogger(__name__)

SEAL_PURPOSE = "e-mail bodies"
SMTP_TIMEOUT_SECONDS = 30
LEASE = timedelta(seconds=2 * SMTP_TIMEOUT_SECONDS + 30)
RETRY_DELAYS = (timedelta(minutes=1), timedelta(minutes=5), timedelta(minutes=30), timedelta(hours=2),
                timedelta(hours=6))
CHANNEL = delivery.Channel(
    name="email", model=EmailMessage, queue="emails", job="zenzefi_backend.jobs.emails.send_email_job",
    lease=LEASE, job_timeout_seconds=LEASE.total_seconds(), retry_delays=RETRY_DELAYS,
    finished_states=("sent", "failed"), purge_age_column="created_at", missing="no such e-mail (it was purged)",
)


class PermanentFailure(Exception):
    """The SMTP server refused the message for good (5xx); retrying cannot help."""


def queue_email(kind: str, to_address: str, context: dict[str, Any], *, user_id: uuid.UUID | None = None,
                dedupe_key: str | None = None, opted_in: bool = True) -> EmailMessage | None:
    """Render and queue an e-mail in the caller's transaction (the caller commits, then `enqueue_email`).

    Returns None — and queues nothing — when the user opted out of this kind, or when an e-mail with the same
    `dedupe_key` already exists (also when another transaction is inserting it right now)."""
    template = TEMPLATES[kind]
    if not opted_in and not template.always_sent:
        return None
    values = {"frontend_url": current_app.config["FRONTEND_URL"], **context}
    message = EmailMessage(
        user_id=user_id, to_address=to_address, kind=kind,
        subject=template.subject.substitute(values)[:255],
        body_sealed=seal(SEAL_PURPOSE, template.body.substitute(values).encode()),
        dedupe_key=dedupe_key, next_attempt_at=now(),
    )
    if dedupe_key is None:
        db.session.add(message)
        db.session.flush()
        return message
    if db.session.scalar(sa.select(EmailMessage.id).where(EmailMessage.dedupe_key == dedupe_key)):
        return None
    try:
        with db.session.begin_nested():
            db.session.add(message)
    except IntegrityError:
        return None
    return message


def enqueue_email(email_id: uuid.UUID, delay: timedelta | None = None, *, attempt: int = 1) -> None:
    """Hand attempt `attempt` (the first, for a new e-mail) to a worker, after the commit that made the row exist."""
    delivery.enqueue(CHANNEL, email_id, attempt, delay.total_seconds() if delay else 0)


def due_emails(moment: datetime, limit: int = 500) -> list[uuid.UUID]:
    return [email_id for email_id, _ in delivery.due(CHANNEL, moment, limit)]


def _mime(message: EmailMessage) -> MimeMessage:
    config = current_app.config
    mime = MimeMessage()
    mime["From"] = config["MAIL_FROM"]
    mime["To"] = message.to_address
    mime["Subject"] = message.subject
    mime["Date"] = format_datetime(message.created_at)
    mime["Message-ID"] = make_msgid(idstring=message.id.hex, domain="zenzefi")
    mime.set_content(unseal(SEAL_PURPOSE, message.body_sealed).decode())
    return mime


def _deliver(mime: MimeMessage) -> None:
    config = current_app.config
    if not config["SMTP_HOST"]:
        folder = Path(current_app.instance_path) / "mail"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{now():%Y%m%dT%H%M%S}-{mime['Message-ID'].strip('<>').split('@')[0]}.eml"
        partial = folder / f".{name}.part"
        partial.write_bytes(bytes(mime))
        partial.replace(folder / name)  # atomic: a reader never sees half a message
        return
    try:
        with smtplib.SMTP(config["SMTP_HOST"], config["SMTP_PORT"], timeout=SMTP_TIMEOUT_SECONDS) as smtp:
            if config["SMTP_USE_TLS"]:
                smtp.starttls(context=ssl.create_default_context())
            if config["SMTP_USERNAME"]:
                smtp.login(config["SMTP_USERNAME"], config["SMTP_PASSWORD"] or "")
            smtp.send_message(mime)
    except (smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
        code = getattr(exc, "smtp_code", None) or 0
        if isinstance(exc, smtplib.SMTPRecipientsRefused):
            code = min(answer[0] for answer in exc.recipients.values())
        if 500 <= code < 600:
            raise PermanentFailure(f"SMTP {code}") from exc
        raise


def send_email(email_id: uuid.UUID) -> str:
    """One attempt to send one e-mail. Safe to call twice at once: only one caller claims it."""
    claimed = delivery.claim(CHANNEL, email_id)
    if claimed is None:
        return delivery.why_not_claimed(CHANNEL, email_id, on_abandon=_abandon)
    message = db.session.get(EmailMessage, email_id, populate_existing=True)
    if message is None:
        db.session.rollback()
        return f"nothing to do: {CHANNEL.missing}"
    attempt, kind, mime = claimed.attempts, message.kind, _mime(message)
    db.session.rollback()  # no transaction open while the SMTP server takes its time
    try:
        _deliver(mime)
    except PermanentFailure as exc:
        error, retry = str(exc), False
    except (smtplib.SMTPException, OSError) as exc:
        error, retry = f"{type(exc).__name__}: {exc}", True
    else:
        return delivery.record_answer(lambda: _sent(email_id, kind))
    return delivery.record_answer(lambda: _failed(email_id, attempt, error, retry=retry))


def _update(email_id: uuid.UUID) -> sa.Update:
    return sa.update(EmailMessage).where(EmailMessage.id == email_id).execution_options(synchronize_session=False)


def _sent(email_id: uuid.UUID, kind: str) -> str:
    # The body may carry a token secret; once sent we keep only that it was sent.
    db.session.execute(_update(email_id).values(status="sent", sent_at=now(), body_sealed=None, last_error=None))
    count(emails_sent, kind=kind)
    db.session.commit()
    return "sent"


def _failed(email_id: uuid.UUID, attempt: int, error: str, *, retry: bool) -> str:
    delay = delivery.retry_delay(CHANNEL, attempt) if retry else None
    outcome = {"status": "failed", "body_sealed": None} if delay is None else {"next_attempt_at": now() + delay}
    db.session.execute(_update(email_id).values(last_error=error[:255], **outcome))
    db.session.commit()
    log.warning("e-mail not sent", extra={"email_id": str(email_id), "error": error[:255], "retry": bool(delay)})
    if delay is not None:
        enqueue_email(email_id, delay, attempt=attempt + 1)
        return f"failed; retry in {int(delay.total_seconds())} s"
    return "failed for good"


def _abandon(email_id: uuid.UUID) -> str:
    if not delivery.abandon(CHANNEL, email_id, body_sealed=None):
        db.session.rollback()
        return "nothing to do: claimed by another worker"
    db.session.commit()
    return "failed: the last attempt never reported an answer"


def purge_sent_emails(older_than: datetime) -> int:
    """Forget finished e-mails created before `older_than`."""
    return delivery.purge(CHANNEL, older_than)
