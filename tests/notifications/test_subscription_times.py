"""An endpoint receives only events that happened after it existed, and for each type only after it subscribed
to that type (SPEC §3.10: a user's webhooks report what happens from then on, never their history)."""
from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from flask_migrate import upgrade

from tests.fixtures.actions import buy_token
from tests.support import app_config
from zenzefi_backend import clock
from zenzefi_backend.extensions import db
from zenzefi_backend.jobs.notifications import relay_outbox_job
from zenzefi_backend.notifications.models import WebhookDelivery

ENDPOINTS = "/api/v1/webhooks/endpoints"
HOOK = "http://127.0.0.1:9/hook"


def subscribe(client, user, events: list[str]) -> str:
    response = client.post(ENDPOINTS, headers=user["headers"], json={"url": HOOK, "events": events})
    assert response.status_code == 201, response.get_json()
    return response.get_json()["id"]


def revoke(client, user, token: dict) -> None:
    assert client.delete(f"/api/v1/tokens/{token['id']}", headers=user["headers"]).status_code == 200


def delivered(endpoint_id: str) -> list[tuple[str, str]]:
    """(event type, token id) of every delivery made for the endpoint, oldest event first."""
    db.session.expire_all()
    deliveries = db.session.scalars(sa.select(WebhookDelivery).where(
        WebhookDelivery.endpoint_id == uuid.UUID(endpoint_id))).all()
    ordered = sorted(deliveries, key=lambda delivery: delivery.payload["created_at"])
    return [(delivery.event_type, delivery.payload["data"].get("token_id")) for delivery in ordered]


def test_an_endpoint_registered_after_a_purchase_does_not_get_it(app_ctx, client, accounts):
    user = accounts.signed_in()
    accounts.fund(user["id"], "10")
    before = buy_token(client, user)  # its token.purchased is still waiting for the relay …
    with clock.travel(timedelta(seconds=1)):
        endpoint = subscribe(client, user, ["token.purchased"])  # … when the endpoint is registered a second later
        after = buy_token(client, user)
    relay_outbox_job()
    assert delivered(endpoint) == [("token.purchased", after["id"])]
    assert before["id"] != after["id"]


def test_a_type_added_later_is_delivered_only_from_then_on(app_ctx, client, accounts):
    user = accounts.signed_in()
    accounts.fund(user["id"], "10")
    endpoint = subscribe(client, user, ["token.purchased"])
    first, second = buy_token(client, user), buy_token(client, user)
    with clock.travel(timedelta(seconds=1)):
        revoke(client, user, first)  # revoked before the endpoint subscribed to token.revoked
    with clock.travel(timedelta(seconds=2)):
        patched = client.patch(f"{ENDPOINTS}/{endpoint}", headers=user["headers"],
                               json={"events": ["token.purchased", "token.revoked"]})
        assert patched.status_code == 200, patched.get_json()
    with clock.travel(timedelta(seconds=3)):
        revoke(client, user, second)
    relay_outbox_job()
    assert delivered(endpoint) == [("token.purchased", first["id"]), ("token.purchased", second["id"]),
                                   ("token.revoked", second["id"])]


def test_a_type_dropped_and_added_again_starts_afresh_and_kept_types_keep_their_time(app_ctx, client, accounts):
    user = accounts.signed_in()
    accounts.fund(user["id"], "10")
    endpoint = subscribe(client, user, ["token.purchased", "token.revoked"])
    bought = buy_token(client, user)
    with clock.travel(timedelta(seconds=1)):
        assert client.patch(f"{ENDPOINTS}/{endpoint}", headers=user["headers"],
                            json={"events": ["token.purchased"]}).status_code == 200
    with clock.travel(timedelta(seconds=2)):
        revoke(client, user, bought)  # while not subscribed to token.revoked
    with clock.travel(timedelta(seconds=3)):
        assert client.patch(f"{ENDPOINTS}/{endpoint}", headers=user["headers"],
                            json={"events": ["token.revoked", "token.purchased"]}).status_code == 200
    relay_outbox_job()
    assert delivered(endpoint) == [("token.purchased", bought["id"])]  # token.purchased kept its time


def test_the_migration_counts_existing_endpoints_as_subscribed_since_their_creation(backends, tmp_path: Path):
    from zenzefi_backend import create_app

    app = create_app(app_config(backends, tmp_path, DATABASE_URL=f"sqlite:///{tmp_path / 'old.db'}"))
    user_id, endpoint_id = uuid.uuid4(), uuid.uuid4()
    created = datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=UTC)
    with app.app_context():
        upgrade(revision="0011_canonical_emails")
        db.session.execute(sa.text(
            "INSERT INTO users (id, email, username, password_hash, is_active, is_superuser, plan, referral_code, "
            "balance, email_notifications, jwt_generation, created_at, updated_at) VALUES (:id, 'w@example.com', "
            "'hooked', 'x', 1, 0, 'free', 'HOOKED000001', 0, 1, 0, :at, :at)"), {"id": user_id.hex, "at": created})
        db.session.execute(sa.text(
            "INSERT INTO webhook_endpoints (id, user_id, url, events, secret_sealed, is_active, consecutive_failures, "
            "created_at, updated_at) VALUES (:id, :user, :url, :events, 'sealed', 1, 0, :at, :at)"),
            {"id": endpoint_id.hex, "user": user_id.hex, "url": HOOK, "events": '["token.purchased", "token.revoked"]',
             "at": created.replace(tzinfo=None)})
        db.session.commit()
        upgrade()
        stored = db.session.execute(sa.text("SELECT subscribed_at FROM webhook_endpoints")).scalar_one()
        db.session.remove()
        db.engine.dispose()
    since = created.isoformat()
    assert (stored if isinstance(stored, dict) else json.loads(stored)) == {
        "token.purchased": since, "token.revoked": since}
