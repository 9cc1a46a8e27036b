"""Notification jobs (SPEC §4): the outbox relay, expiring-token e-mails, delivery-log retention."""
from __future__ import annotations

from datetime import timedelta

from flask import current_app

from ..clock import now
from ..notifications.email import purge_sent_emails
from ..notifications.relay import purge_dispatched_events, relay_new_events, relay_outbox
from ..notifications.reminders import remind_expiring_tokens
from ..notifications.webhooks import purge_delivery_log


def relay_outbox_job() -> dict[str, int]:
    """Every 60 s: events → webhook deliveries and e-mails, then every due attempt handed to the workers."""
    return relay_outbox()


def relay_new_events_job() -> dict[str, int]:
    """Asked for by a commit that wrote events (outbox.nudge_relay): the new events → deliveries and e-mails."""
    return relay_new_events()


def expiring_token_emails_job() -> dict[str, int]:
    return {"reminded": remind_expiring_tokens()}


def delivery_log_retention() -> dict[str, int]:
    """Finished deliveries, sent e-mails and relayed events older than DELIVERY_LOG_RETENTION_DAYS."""
    cutoff = now() - timedelta(days=current_app.config["DELIVERY_LOG_RETENTION_DAYS"])
    return {
        "webhook_deliveries": purge_delivery_log(cutoff),
        "emails": purge_sent_emails(cutoff),
        "outbox_events": purge_dispatched_events(cutoff),
    }
