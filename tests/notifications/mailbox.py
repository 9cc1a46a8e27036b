"""Fixtures for tests that read what was e-mailed: the `.eml` mailbox of the embedded default, or an SMTP sink."""
from __future__ import annotations

from collections.abc import Callable
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.support import SmtpSink


@pytest.fixture
def mailbox(app) -> Path:
    """`instance/mail/`, emptied before the test."""
    folder = Path(app.instance_path) / "mail"
    for leftover in folder.glob("*.eml"):
        leftover.unlink()
    return folder


@pytest.fixture
def mailbox_files(mailbox) -> Callable[[], list[EmailMessage]]:
    """The e-mails written to the mailbox so far, oldest first."""
    def read() -> list[EmailMessage]:
        return [message_from_bytes(path.read_bytes(), policy=policy.default) for path in sorted(mailbox.glob("*.eml"))]

    return read


@pytest.fixture
def smtp(app, monkeypatch):
    """A real SMTP server the app sends to for the duration of the test."""
    with SmtpSink() as sink:
        monkeypatch.setitem(app.config, "SMTP_HOST", "127.0.0.1")
        monkeypatch.setitem(app.config, "SMTP_PORT", sink.port)
        yield sink


def send_queued_emails() -> int:
    """Do what the "emails" workers do (inline in the embedded default, where this finds nothing left)."""
    from zenzefi_backend.clock import now
    from zenzefi_backend.notifications.email import due_emails, send_email

    due = due_emails(now())
    for email_id in due:
        send_email(email_id)
    return len(due)


@pytest.fixture
def smtp_down(app, monkeypatch) -> None:
    """The app sends to an SMTP port nobody listens on (connection refused), for the duration of the test."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]  # nothing listens once the probe is closed
    monkeypatch.setitem(app.config, "SMTP_HOST", "127.0.0.1")
    monkeypatch.setitem(app.config, "SMTP_PORT", closed_port)
