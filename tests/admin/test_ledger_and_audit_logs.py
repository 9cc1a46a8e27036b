"""Admin transactions (every user's ledger) and the audit trail, with their filters."""
from __future__ import annotations

import uuid
from datetime import timedelta
from urllib.parse import quote

import pytest

from zenzefi_backend import clock

from .helpers import AUDIT_LOGS, TRANSACTIONS


def get(client, admin, path: str, **query) -> dict:
    response = client.get(path, query_string=query, headers=admin["headers"])
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_transactions_of_every_user_newest_first_with_filters(client, accounts, admin):
    alice, bob = accounts.signed_in(), accounts.signed_in()
    accounts.fund(alice["id"], "20.00")
    accounts.fund(bob["id"], "30.00")
    assert client.post("/api/v1/tokens/purchase", json={"duration_hours": 12},
                       headers=alice["headers"]).status_code == 201
    page = get(client, admin, TRANSACTIONS)
    assert page["total"] == 3
    assert [(t["user_id"], t["transaction_type"], t["amount"]) for t in page["items"]] == [
        (alice["id"], "purchase", "-10.00"), (bob["id"], "adjustment", "30.00"), (alice["id"], "adjustment", "20.00")]
    mine = get(client, admin, TRANSACTIONS, user_id=alice["id"])
    assert [t["balance_after"] for t in mine["items"]] == ["10.00", "20.00"]
    purchases = get(client, admin, TRANSACTIONS, transaction_type="purchase")
    assert [t["user_id"] for t in purchases["items"]] == [alice["id"]]
    assert get(client, admin, TRANSACTIONS, user_id=bob["id"], transaction_type="purchase")["total"] == 0
    assert get(client, admin, TRANSACTIONS, limit=1, offset=2)["items"][0]["amount"] == "20.00"


@pytest.mark.parametrize("query", [{"transaction_type": "gift"}, {"user_id": "bob"}, {"limit": 1000}])
def test_bad_transaction_filters_are_422(client, admin, query):
    response = client.get(TRANSACTIONS, query_string=query, headers=admin["headers"])
    assert response.status_code == 422, response.get_json()
    assert set(response.get_json()["errors"]) == set(query)


def test_audit_logs_newest_first_with_filters(client, accounts, admin):
    user = accounts.signed_in()
    client.post("/api/v1/auth/login", json={"email": user["email"], "password": "wrong password"})
    page = get(client, admin, AUDIT_LOGS)
    # The admin's and the user's registration and login (oldest last), then the failed login.
    assert [entry["action"] for entry in page["items"]] == [
        "auth.login_failed", "auth.login", "user.registered", "auth.login", "user.registered"]
    assert page["total"] == 5
    entry = page["items"][0]
    assert set(entry) == {"id", "actor_id", "action", "resource_type", "resource_id", "details", "ip_address",
                          "user_agent", "created_at"}
    assert entry["actor_id"] == user["id"] and entry["details"]["reason"] == "wrong_password"

    by_actor = get(client, admin, AUDIT_LOGS, user_id=user["id"])
    assert {e["actor_id"] for e in by_actor["items"]} == {user["id"]} and by_actor["total"] == 3
    logins = get(client, admin, AUDIT_LOGS, action="auth.login")
    assert {e["action"] for e in logins["items"]} == {"auth.login"}
    assert get(client, admin, AUDIT_LOGS, action="auth.")["total"] == 0  # exact match, not a prefix
    assert get(client, admin, AUDIT_LOGS, resource_type="user")["total"] == page["total"]
    assert get(client, admin, AUDIT_LOGS, resource_type="payment")["total"] == 0
    assert get(client, admin, AUDIT_LOGS, user_id=str(uuid.uuid4()))["total"] == 0


def test_audit_logs_since(client, accounts, admin):
    with clock.travel(timedelta(days=-2)):
        accounts.register()
    boundary = clock.now() - timedelta(days=1)
    recent = get(client, admin, AUDIT_LOGS, since=boundary.isoformat())
    assert recent["total"] >= 2  # the admin's registration and login
    assert all(entry["created_at"] >= boundary.isoformat() for entry in recent["items"])
    everything = get(client, admin, AUDIT_LOGS, since=(boundary - timedelta(days=2)).isoformat())
    assert everything["total"] == recent["total"] + 1
    # Another offset and `Z` name the same moment.
    plus_two = (boundary + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S.%f") + "+02:00"
    assert get(client, admin, AUDIT_LOGS, since=plus_two)["total"] == recent["total"]
    zulu = boundary.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert get(client, admin, AUDIT_LOGS, since=zulu)["total"] == recent["total"]
    assert get(client, admin, AUDIT_LOGS, since=(clock.now() + timedelta(minutes=1)).isoformat())["total"] == 0
    # Properly percent-encoded in a raw query string, too.
    raw = client.get(f"{AUDIT_LOGS}?since={quote(boundary.isoformat())}", headers=admin["headers"])
    assert raw.get_json()["total"] == recent["total"]


@pytest.mark.parametrize("query", [
    {"since": "yesterday"}, {"since": "2026-01-05T10:00:00"}, {"since": "2026-01-05"}, {"since": "2026-02-30T10:00Z"},
    {"since": "1767607200"}, {"user_id": "admin"}, {"action": ""}, {"action": "x" * 65}, {"resource_type": ""},
    {"action": "auth\x00login"}, {"resource_type": "us\x00er"},
])
def test_bad_audit_filters_are_422(client, admin, query):
    response = client.get(AUDIT_LOGS, query_string=query, headers=admin["headers"])
    assert response.status_code == 422, response.get_json()
    assert set(response.get_json()["errors"]) == set(query)


def test_an_unencoded_plus_in_since_is_422_not_a_wrong_answer(client, admin):
    response = client.get(f"{AUDIT_LOGS}?since=2026-01-05T10:00:00+02:00", headers=admin["headers"])
    assert response.status_code == 422 and "since" in response.get_json()["errors"]
