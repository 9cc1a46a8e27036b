"""Admin tokens: every user's tokens without secrets, a status filter computed in SQL, and a force revoke
without refund that the proxy honours on the very next request."""
from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from tests.fixtures.proxy import DEVICE_B, assert_error
from zenzefi_backend import clock

from .helpers import BROWSER, TOKENS, audit_rows, token_path

STATUSES = ("ready", "active", "expired", "revoked")


def listing(client, admin, **query) -> dict:
    response = client.get(TOKENS, query_string=query, headers=admin["headers"])
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def revoke(client, admin, token_id: str):
    return client.delete(token_path(token_id), headers={**admin["headers"], "User-Agent": BROWSER})


def test_lists_every_users_tokens_newest_first_without_secrets(env):
    admin = env.accounts.signed_in(superuser=True)
    first = env.buy()
    second = env.buy()
    page = listing(env.client, admin)
    assert [t["id"] for t in page["items"]] == [second["id"], first["id"]]
    assert page["total"] == 2
    item = page["items"][0]
    assert item["user_id"] == second["user"]["id"] and item["token_hint"] == second["token_hint"]
    assert item["status"] == "ready" and item["paid_znc"] == "1.00"
    text = str(page)
    assert second["token"] not in text and first["token"] not in text and "token_hash" not in text
    assert "token" not in item
    by_owner = listing(env.client, admin, user_id=first["user"]["id"])
    assert [t["id"] for t in by_owner["items"]] == [first["id"]]
    assert listing(env.client, admin, user_id=str(uuid.uuid4()))["items"] == []


def test_the_status_filter_agrees_with_each_tokens_status(env):
    admin = env.accounts.signed_in(superuser=True)
    user = env.funded_user()
    ready, active, expired, revoked = (env.buy(user) for _ in range(4))
    assert env.get("certificates/filter", token=active).status_code == 200
    assert env.get("certificates/filter", token=expired, device=DEVICE_B).status_code == 200
    long_ago = clock.now() - timedelta(hours=2)
    env.update_token(expired, activated_at=long_ago, expires_at=long_ago + timedelta(hours=1))
    assert env.revoke(revoked).status_code == 200
    expected = {"ready": ready, "active": active, "expired": expired, "revoked": revoked}
    for status, token in expected.items():
        items = listing(env.client, admin, status=status)["items"]
        assert [t["id"] for t in items] == [token["id"]], status
        assert items[0]["status"] == status


def test_at_the_expiry_instant_a_token_is_expired_in_sql_as_in_python(env, monkeypatch):
    admin = env.accounts.signed_in(superuser=True)
    token = env.buy()
    assert env.get("certificates/filter", token=token).status_code == 200
    expires_at = env.token_row(token).expires_at

    def freeze(instant):
        class Frozen(clock.datetime):
            @classmethod
            def now(cls, tz=None):
                return instant

        monkeypatch.setattr(clock, "datetime", Frozen)

    for instant, status in ((expires_at - timedelta(microseconds=1), "active"), (expires_at, "expired")):
        freeze(instant)
        (item,) = listing(env.client, admin, status=status)["items"]
        assert item["id"] == token["id"] and item["status"] == status
        other = "expired" if status == "active" else "active"
        assert listing(env.client, admin, status=other)["items"] == []


@pytest.mark.parametrize("query", [{"status": "gone"}, {"status": ""}, {"user_id": "nope"}, {"user_id": "123"},
                                   {"limit": "many"}])
def test_bad_filters_are_422(client, admin, query):
    response = client.get(TOKENS, query_string=query, headers=admin["headers"])
    assert response.status_code == 422, response.get_json()
    assert set(response.get_json()["errors"]) == set(query)


def test_force_revoke_refunds_nothing_and_stops_the_token_on_the_next_request(env):
    admin = env.accounts.signed_in(superuser=True)
    token = env.buy()
    owner = token["user"]
    for _ in range(3):
        assert env.get("certificates/filter", token=token).status_code == 200
    balance_before = env.client.get("/api/v1/currency/balance", headers=owner["headers"]).get_json()["balance"]

    response = revoke(env.client, admin, token["id"])
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["id"] == token["id"] and body["status"] == "revoked" and body["revoked_at"] is not None
    assert body["user_id"] == owner["id"] and "token" not in body
    env.upstream.clear()
    assert_error(env.get("certificates/filter", token=token), 401)
    assert_error(env.get("certificates/filter", token=token, device=DEVICE_B), 401)
    assert_error(env.status(token), 401)
    assert env.upstream.log == []

    balance = env.client.get("/api/v1/currency/balance", headers=owner["headers"]).get_json()["balance"]
    assert balance == balance_before == "99.00"
    ledger = env.client.get("/api/v1/currency/transactions", headers=owner["headers"]).get_json()["items"]
    assert [entry["transaction_type"] for entry in ledger] == ["purchase", "adjustment"]
    (session,) = env.sessions(token)
    assert not session.is_active
    assert [e["reason"] for e in env.events("session.ended", token)] == ["revoked"]
    (event,) = env.events("token.revoked", token)
    assert event["refund_amount"] == "0.00"
    (entry,) = audit_rows(env.app, "admin.token_revoked")
    assert entry["actor_id"] == admin["id"] and entry["resource_id"] == token["id"]
    assert entry["details"]["user_id"] == owner["id"] and entry["details"]["refund_amount"] == "0.00"
    assert entry["user_agent"] == BROWSER and entry["ip_address"] == "127.0.0.1"
    # The owner can neither use nor revoke it any more.
    assert env.revoke(token).status_code == 404


def test_force_revoke_twice_is_409_and_unknown_is_404(env):
    admin = env.accounts.signed_in(superuser=True)
    token = env.buy()
    assert revoke(env.client, admin, token["id"]).status_code == 200
    again = revoke(env.client, admin, token["id"])
    assert again.status_code == 409 and "already revoked" in again.get_json()["message"]
    assert len(audit_rows(env.app, "admin.token_revoked")) == 1
    assert revoke(env.client, admin, str(uuid.uuid4())).status_code == 404
    assert env.client.delete(f"{TOKENS}/not-a-uuid", headers=admin["headers"]).status_code == 404


def test_a_token_the_owner_revoked_is_409_for_the_admin(env):
    admin = env.accounts.signed_in(superuser=True)
    token = env.buy()
    assert env.revoke(token).status_code == 200
    assert revoke(env.client, admin, token["id"]).status_code == 409


def test_an_expired_token_can_still_be_force_revoked(env):
    admin = env.accounts.signed_in(superuser=True)
    token = env.buy()
    long_ago = clock.now() - timedelta(hours=2)
    env.update_token(token, activated_at=long_ago, expires_at=long_ago + timedelta(hours=1))
    response = revoke(env.client, admin, token["id"])
    assert response.status_code == 200 and response.get_json()["status"] == "revoked"
    assert audit_rows(env.app, "admin.token_revoked")[0]["details"]["status_before"] == "expired"
