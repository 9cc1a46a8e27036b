"""Webhook endpoints over the API: own-only CRUD, the secret shown once and sealed at rest, the 10-endpoint cap,
strict input, the audit trail, the delivery log and the test ping."""
from __future__ import annotations

import base64
import uuid

import pytest
import sqlalchemy as sa
from rq import Queue, SimpleWorker

from tests.admin.helpers import audit_rows
from tests.fixtures.webhooks import verify_signature
from zenzefi_backend.extensions import db, get_redis
from zenzefi_backend.notifications.models import EVENT_TYPES, WebhookDelivery, WebhookEndpoint
from zenzefi_backend.sealing import unseal

ENDPOINTS = "/api/v1/webhooks/endpoints"
ENDPOINT_FIELDS = {"id", "url", "events", "is_active", "consecutive_failures", "disabled_reason", "disabled_at",
                   "created_at", "updated_at"}


def endpoint_path(endpoint_id: str, suffix: str = "") -> str:
    return f"{ENDPOINTS}/{endpoint_id}{suffix}"


def create(client, user, url="http://127.0.0.1:8080/hooks", events=("token.purchased",), **extra):
    return client.post(ENDPOINTS, json={"url": url, "events": list(events), **extra}, headers=user["headers"])


@pytest.fixture
def user(accounts) -> dict:
    return accounts.signed_in()


@pytest.fixture
def other(accounts) -> dict:
    return accounts.signed_in()


def test_create_answers_201_with_the_secret_once_and_seals_it_at_rest(app, client, user):
    response = create(client, user, events=["token.purchased", "balance.low", "token.purchased"])
    assert response.status_code == 201, response.get_json()
    created = response.get_json()
    assert set(created) == ENDPOINT_FIELDS | {"secret"}
    assert created["events"] == ["token.purchased", "balance.low"]  # duplicates folded, order kept
    assert created["is_active"] is True and created["consecutive_failures"] == 0
    assert created["disabled_reason"] is None and created["created_at"].endswith("+00:00")
    secret = created["secret"]
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) >= 24

    shown = [client.get(endpoint_path(created["id"]), headers=user["headers"]).get_json(),
             client.get(ENDPOINTS, headers=user["headers"]).get_json()["items"][0],
             client.patch(endpoint_path(created["id"]), json={"events": ["balance.low"]},
                          headers=user["headers"]).get_json()]
    for body in shown:
        assert set(body) == ENDPOINT_FIELDS, body
        assert secret not in str(body)

    with app.app_context():
        stored = db.session.get(WebhookEndpoint, uuid.UUID(created["id"]))
        assert secret not in stored.secret_sealed
        assert unseal("webhook secrets", stored.secret_sealed).decode() == secret

    second = create(client, user).get_json()
    assert second["secret"] != secret


def test_another_users_endpoint_is_a_404_everywhere(client, user, other):
    endpoint = create(client, user).get_json()
    for method, suffix, body in (("get", "", None), ("patch", "", {"is_active": False}), ("delete", "", None),
                                 ("get", "/deliveries", None), ("post", "/test", None)):
        response = getattr(client, method)(endpoint_path(endpoint["id"], suffix), json=body, headers=other["headers"])
        assert response.status_code == 404, (method, suffix, response.get_json())
        assert response.get_json()["message"] == "Webhook endpoint not found."
    assert client.get(ENDPOINTS, headers=other["headers"]).get_json()["total"] == 0
    assert client.get(endpoint_path(endpoint["id"]), headers=user["headers"]).get_json()["is_active"] is True
    assert client.get(endpoint_path(str(uuid.uuid4())), headers=user["headers"]).status_code == 404


def test_every_route_needs_a_jwt(client, user):
    endpoint = create(client, user).get_json()
    for method, path in (("get", ENDPOINTS), ("post", ENDPOINTS), ("get", endpoint_path(endpoint["id"])),
                         ("patch", endpoint_path(endpoint["id"])), ("delete", endpoint_path(endpoint["id"])),
                         ("get", endpoint_path(endpoint["id"], "/deliveries")),
                         ("post", endpoint_path(endpoint["id"], "/test"))):
        assert getattr(client, method)(path, json={}).status_code == 401, (method, path)


@pytest.mark.parametrize("body, field", [
    ({"url": "http://127.0.0.1:8080/h", "events": ["token.purchased"], "secret": "whsec_mine"}, "secret"),
    ({"url": "http://127.0.0.1:8080/h", "events": ["token.purchased"], "is_active": False}, "is_active"),
    ({"url": "http://127.0.0.1:8080/h", "events": ["no.such.event"]}, "events"),
    ({"url": "http://127.0.0.1:8080/h", "events": ["test.ping"]}, "events"),
    ({"url": "http://127.0.0.1:8080/h", "events": []}, "events"),
    ({"url": "http://127.0.0.1:8080/h", "events": "token.purchased"}, "events"),
    ({"url": "http://127.0.0.1:8080/h"}, "events"),
    ({"events": ["token.purchased"]}, "url"),
    ({"url": "ftp://127.0.0.1/h", "events": ["token.purchased"]}, "url"),
    ({"url": "http://127.0.0.1:8080/h#frag", "events": ["token.purchased"]}, "url"),
])
def test_create_refuses_bad_or_unknown_fields_with_422(client, user, body, field):
    response = client.post(ENDPOINTS, json=body, headers=user["headers"])
    assert response.status_code == 422, response.get_json()
    assert field in response.get_json()["errors"], response.get_json()
    assert client.get(ENDPOINTS, headers=user["headers"]).get_json()["total"] == 0


@pytest.mark.parametrize("body, field", [
    ({"secret": "whsec_x"}, "secret"), ({"consecutive_failures": 0}, "consecutive_failures"),
    ({"disabled_reason": None}, "disabled_reason"), ({"user_id": str(uuid.uuid4())}, "user_id"),
    ({"events": []}, "events"), ({"url": "http://user:pw@127.0.0.1:8080/h"}, "url"),
])
def test_patch_accepts_only_url_events_and_is_active(client, user, body, field):
    endpoint = create(client, user).get_json()
    response = client.patch(endpoint_path(endpoint["id"]), json=body, headers=user["headers"])
    assert response.status_code == 422, response.get_json()
    assert field in response.get_json()["errors"]
    unchanged = {name: value for name, value in endpoint.items() if name != "secret"}
    assert client.get(endpoint_path(endpoint["id"]), headers=user["headers"]).get_json() == unchanged


def test_patch_changes_the_fields_and_answers_the_updated_object(client, user):
    endpoint = create(client, user).get_json()
    response = client.patch(endpoint_path(endpoint["id"]), headers=user["headers"], json={
        "url": "https://127.0.0.1:8443/new", "events": ["balance.low", "balance.low", "session.ended"],
        "is_active": False})
    assert response.status_code == 200, response.get_json()
    changed = response.get_json()
    assert (changed["url"], changed["events"], changed["is_active"]) == (
        "https://127.0.0.1:8443/new", ["balance.low", "session.ended"], False)
    assert changed["disabled_reason"] == "manual" and changed["disabled_at"] is not None
    assert client.get(endpoint_path(endpoint["id"]), headers=user["headers"]).get_json() == changed
    unchanged = client.patch(endpoint_path(endpoint["id"]), json={}, headers=user["headers"])
    assert unchanged.status_code == 200 and unchanged.get_json() == changed


def test_re_enabling_resets_the_failure_count_and_the_reason(app, client, user):
    endpoint = create(client, user).get_json()
    with app.app_context():
        db.session.execute(sa.update(WebhookEndpoint).where(WebhookEndpoint.id == uuid.UUID(endpoint["id"])).values(
            is_active=False, consecutive_failures=10, disabled_reason="failing", disabled_at=sa.func.now()))
        db.session.commit()
    disabled = client.get(endpoint_path(endpoint["id"]), headers=user["headers"]).get_json()
    assert (disabled["is_active"], disabled["disabled_reason"], disabled["consecutive_failures"]) == (
        False, "failing", 10)
    enabled = client.patch(endpoint_path(endpoint["id"]), json={"is_active": True}, headers=user["headers"]).get_json()
    assert (enabled["is_active"], enabled["disabled_reason"], enabled["disabled_at"],
            enabled["consecutive_failures"]) == (True, None, None, 0)


def test_at_most_ten_endpoints_per_user(client, user, other):
    for number in range(10):
        assert create(client, user, url=f"http://127.0.0.1:8080/{number}").status_code == 201
    refused = create(client, user, url="http://127.0.0.1:8080/eleventh")
    assert refused.status_code == 409, refused.get_json()
    assert "10" in refused.get_json()["message"]
    assert create(client, other).status_code == 201  # the cap is per user
    first = client.get(ENDPOINTS, headers=user["headers"]).get_json()["items"][-1]
    assert client.delete(endpoint_path(first["id"]), headers=user["headers"]).status_code == 204
    assert create(client, user, url="http://127.0.0.1:8080/again").status_code == 201


def test_the_list_is_paginated_newest_first(client, user):
    ids = [create(client, user, url=f"http://127.0.0.1:8080/{number}").get_json()["id"] for number in range(3)]
    page = client.get(f"{ENDPOINTS}?limit=2&offset=0", headers=user["headers"]).get_json()
    assert (page["total"], page["limit"], page["offset"]) == (3, 2, 0)
    rest = client.get(f"{ENDPOINTS}?limit=2&offset=2", headers=user["headers"]).get_json()
    assert [item["id"] for item in page["items"] + rest["items"]] == ids[::-1]
    assert client.get(f"{ENDPOINTS}?limit=101", headers=user["headers"]).status_code == 422


def test_delete_answers_204_and_takes_the_delivery_log_along(app, client, user):
    endpoint = create(client, user).get_json()
    with app.app_context():
        db.session.add(WebhookDelivery(endpoint_id=uuid.UUID(endpoint["id"]), message_id="msg_x", event_type="x",
                                       payload={}, status="succeeded"))
        db.session.commit()
    response = client.delete(endpoint_path(endpoint["id"]), headers=user["headers"])
    assert response.status_code == 204 and response.data == b""
    assert client.get(endpoint_path(endpoint["id"]), headers=user["headers"]).status_code == 404
    assert client.delete(endpoint_path(endpoint["id"]), headers=user["headers"]).status_code == 404
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(WebhookDelivery)) == 0


def test_endpoint_changes_are_audited_without_query_strings(app, client, user):
    endpoint = create(client, user, url="http://127.0.0.1:8080/hooks?token=abc").get_json()
    client.patch(endpoint_path(endpoint["id"]), json={"events": ["balance.low"]}, headers=user["headers"])
    client.patch(endpoint_path(endpoint["id"]), json={}, headers=user["headers"])  # no change, no row
    client.delete(endpoint_path(endpoint["id"]), headers=user["headers"])
    rows = [row for row in audit_rows(app) if row["resource_type"] == "webhook_endpoint"]
    assert [row["action"] for row in rows] == [
        "webhook_endpoint.created", "webhook_endpoint.updated", "webhook_endpoint.deleted"]
    for row in rows:
        assert (row["actor_id"], row["resource_id"]) == (user["id"], endpoint["id"])
        assert "abc" not in str(row["details"]) and endpoint["secret"] not in str(row["details"])
    assert rows[0]["details"] == {"url": "http://127.0.0.1:8080/hooks", "events": ["token.purchased"],
                                  "is_active": True}
    assert rows[1]["details"] == {"changed": {"events": {"from": ["token.purchased"], "to": ["balance.low"]}}}


def test_every_event_type_can_be_subscribed(client, user):
    response = create(client, user, events=EVENT_TYPES)
    assert response.status_code == 201 and response.get_json()["events"] == list(EVENT_TYPES)


def test_the_test_ping_is_queued_signed_and_shows_in_the_delivery_log(app, client, user, receiver):
    endpoint = create(client, user, url=receiver.url(), events=["balance.low"]).get_json()
    response = client.post(endpoint_path(endpoint["id"], "/test"), headers=user["headers"])
    assert response.status_code == 202, response.get_json()
    queued = response.get_json()
    assert queued["event_type"] == "test.ping" and queued["endpoint_id"] == endpoint["id"]
    assert queued["message_id"].startswith("msg_") and "secret" not in queued
    if not app.config["EMBEDDED"]:  # a real queue: a worker takes it from "webhooks"
        assert queued["status"] == "pending" and queued["attempts"] == 0
        with app.app_context():
            queue = Queue("webhooks", connection=get_redis())
            assert queue.count == 1
            SimpleWorker([queue], connection=get_redis()).work(burst=True)
    (ping,) = receiver.wait_for(1)
    body = verify_signature(endpoint["secret"], ping)
    assert body == {"id": queued["message_id"], "type": "test.ping", "created_at": body["created_at"],
                    "data": {"endpoint_id": endpoint["id"], "message": body["data"]["message"]}}
    assert ping.headers["webhook-id"] == queued["message_id"]

    log = client.get(endpoint_path(endpoint["id"], "/deliveries"), headers=user["headers"]).get_json()
    assert log["total"] == 1
    (delivery,) = log["items"]
    assert (delivery["id"], delivery["status"], delivery["attempts"], delivery["response_status"]) == (
        queued["id"], "succeeded", 1, 204)
    assert delivery["payload"] == body and delivery["completed_at"] is not None


def test_no_test_ping_to_a_disabled_endpoint(client, user):
    endpoint = create(client, user).get_json()
    client.patch(endpoint_path(endpoint["id"]), json={"is_active": False}, headers=user["headers"])
    response = client.post(endpoint_path(endpoint["id"], "/test"), headers=user["headers"])
    assert response.status_code == 409, response.get_json()
    assert client.get(endpoint_path(endpoint["id"], "/deliveries"), headers=user["headers"]).get_json()["total"] == 0


def test_the_test_route_takes_no_fields(client, user):
    endpoint = create(client, user).get_json()
    response = client.post(endpoint_path(endpoint["id"], "/test"), json={"event": "token.purchased"},
                           headers=user["headers"])
    assert response.status_code == 422
