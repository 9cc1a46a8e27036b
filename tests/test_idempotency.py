from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa

from zenzefi_backend import clock
from zenzefi_backend.extensions import db
from zenzefi_backend.idempotency import IdempotencyKey, purge_expired


@pytest.fixture
def buyer(accounts):
    return accounts.funded("100.00")


def purchase(client, user, key, body=None):
    headers = {**user["headers"], "Idempotency-Key": key}
    return client.post("/api/v1/tokens/purchase", headers=headers, json=body or {"duration_hours": 24})


def balance(client, user) -> str:
    return client.get("/api/v1/currency/balance", headers=user["headers"]).get_json()["balance"]


def test_replay_returns_the_first_response_and_changes_nothing(client, buyer):
    first = purchase(client, buyer, "key-1", {"duration_hours": 24, "scope": "full"})
    assert first.status_code == 201
    replay = purchase(client, buyer, "key-1", {"scope": "full", "duration_hours": 24})  # same body, other order
    assert replay.status_code == 201
    assert replay.get_json() == first.get_json()
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert balance(client, buyer) == "82.00"
    assert client.get("/api/v1/tokens/my-tokens", headers=buyer["headers"]).get_json()["total"] == 1


def test_same_key_with_another_body_is_422(client, buyer):
    purchase(client, buyer, "key-1")
    response = purchase(client, buyer, "key-1", {"duration_hours": 1})
    assert response.status_code == 422
    assert balance(client, buyer) == "82.00"


def test_a_402_is_replayed_too(client, accounts):
    poor = accounts.signed_in()
    assert purchase(client, poor, "k").status_code == 402
    accounts.fund(poor["id"], "50")
    assert purchase(client, poor, "k").status_code == 402
    assert purchase(client, poor, "k2").status_code == 201


def test_keys_are_scoped_to_the_user(client, buyer, accounts):
    other = accounts.signed_in()
    accounts.fund(other["id"], "100")
    assert purchase(client, buyer, "shared").status_code == 201
    assert purchase(client, other, "shared").status_code == 201
    assert balance(client, other) == "82.00"


def test_request_still_running_is_409(app, client, buyer):
    from zenzefi_backend.idempotency import _fingerprint

    with app.test_request_context("/api/v1/tokens/purchase", method="POST", json={"duration_hours": 24}):
        fingerprint = _fingerprint()
    with app.app_context():
        db.session.add(IdempotencyKey(user_id=uuid.UUID(buyer["id"]), key="busy", fingerprint=fingerprint,
                                      created_at=clock.now()))
        db.session.commit()
    response = purchase(client, buyer, "busy")
    assert response.status_code == 409
    assert balance(client, buyer) == "100.00"


@pytest.mark.parametrize("key", ["", "   ", "k" * 256, "tab\there"])
def test_malformed_keys_are_400(client, buyer, key):
    assert purchase(client, buyer, key).status_code == 400
    assert balance(client, buyer) == "100.00"


def test_validation_failures_are_not_stored(client, buyer):
    assert purchase(client, buyer, "v", {"duration_hours": 2}).status_code == 422
    assert purchase(client, buyer, "v").status_code == 201


def test_keys_expire_after_24_hours(app, client, buyer):
    purchase(client, buyer, "old")
    with clock.travel(timedelta(hours=24, seconds=1)):
        assert purchase(client, buyer, "old").headers.get("Idempotent-Replayed") is None
        assert balance(client, buyer) == "64.00"
    with app.app_context(), clock.travel(timedelta(hours=48, seconds=2)):
        assert purge_expired() == 1


def test_stored_responses_do_not_keep_token_secrets_in_clear(app, client, buyer):
    secret = purchase(client, buyer, "sealed").get_json()["token"]
    with app.app_context():
        stored = db.session.scalar(sa.select(IdempotencyKey).where(IdempotencyKey.key == "sealed"))
        assert secret not in stored.response_body and "paid_znc" not in stored.response_body
    assert purchase(client, buyer, "sealed").get_json()["token"] == secret
