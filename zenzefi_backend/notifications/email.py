"""E-mail: queued as rows in the caller's transaction, sent by RQ jobs over SMTP (or as `.eml` files).

A row is the promise to send; Redis only carries the nudge. An e-mail is claimed with a conditional UPDATE
(a lease), sent with no DB transaction open, then marked sent — at least once: a worker that dies between
the SMTP answer and the commit sends it again after the lease.
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
from ..database import db, purge_in_batches
from ..jobs.queues import enqueue_attempt
from ..metrics import count, emails_sent
from ..sealing import seal, unseal
from .models import EmailMessage
from .templates import TEMPLATES

log = logging.getLogger(__name__)

SEAL_PURPOSE = "e-mail bodies"
SMTP_TIMEOUT_SECONDS = 30
LEASE = timedelta(seconds=2 * SMTP_TIMEOUT_SECONDS + 30)
RETRY_DELAYS = (timedelta(minutes=1), timedelta(minutes=5), timedelta(minutes=30), timedelta(hours=2),
                timedelta(hours=6))


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


def enqueue_email(email_id: uuid.UUID, delay: timedelta | None = None) -> None:
    """Hand the e-mail to a worker, after the commit that made the row exist (see `enqueue_attempt`)."""
    from ..jobs.emails import send_email_job

    if not enqueue_attempt("emails", send_email_job, str(email_id),
                           delay_seconds=delay.total_seconds() if delay else 0, job_timeout=LEASE.total_seconds()):
        log.warning("cannot enqueue an e-mail; the relay will pick it up", extra={"email_id": str(email_id)})


def due_emails(moment: datetime, limit: int = 500) -> list[uuid.UUID]:
    return list(db.session.scalars(
        sa.select(EmailMessage.id)
        .where(EmailMessage.status == "pending", EmailMessage.next_attempt_at <= moment)
        .order_by(EmailMessage.next_attempt_at).limit(limit)
    ))


def _claim(email_id: uuid.UUID) -> EmailMessage | None:
    moment = now()
    claimed = db.session.execute(
        sa.update(EmailMessage)
        .where(EmailMessage.id == email_id, EmailMessage.status == "pending",
               EmailMessage.next_attempt_at <= moment)
        .values(attempts=EmailMessage.attempts + 1, next_attempt_at=moment + LEASE)
        .returning(EmailMessage.id)
    ).scalar()
    db.session.commit()
    return db.session.get(EmailMessage, email_id) if claimed else None


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
    message = _claim(email_id)
    if message is None:
        return "not due, already sent, or claimed by another worker"
    try:
        _deliver(_mime(message))
    except PermanentFailure as exc:
        return _failed(message, str(exc), retry=False)
    except (smtplib.SMTPException, OSError) as exc:
        return _failed(message, f"{type(exc).__name__}: {exc}", retry=True)
    message.status = "sent"
    message.sent_at = now()
    message.body_sealed = None  # it may carry a token secret; once sent we keep only that it was sent
    message.last_error = None
    count(emails_sent, kind=message.kind)
    db.session.commit()
    return "sent"


def _failed(message: EmailMessage, error: str, *, retry: bool) -> str:
    message.last_error = error[:255]
    delay = RETRY_DELAYS[message.attempts - 1] if retry and message.attempts <= len(RETRY_DELAYS) else None
    if delay is None:
        message.status = "failed"
        message.body_sealed = None
    else:
        message.next_attempt_at = now() + delay
    email_id = message.id
    db.session.commit()
    log.warning("e-mail not sent", extra={"email_id": str(email_id), "error": error[:255], "retry": bool(delay)})
    if delay is not None:
        enqueue_email(email_id, delay)
        return f"failed; retry in {int(delay.total_seconds())} s"
    return "failed for good"


def purge_sent_emails(older_than: datetime) -> int:
    """Forget finished e-mails created before `older_than`."""
    return purge_in_batches(EmailMessage, EmailMessage.status.in_(("sent", "failed")),
                            EmailMessage.created_at < older_than)
