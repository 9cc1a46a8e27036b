"""Admin sessions: list with filters, and ending one frees its token for another device at once."""
from __future__ import annotations

import uuid

import pytest

from tests.fixtures.proxy import CLIENT_ADDRESS, DEVICE_A, DEVICE_B, assert_error, use_database_only

from .helpers import BROWSER, SESSIONS, audit_rows, session_path


def listing(client, admin, **query) -> dict:
    response = client.get(SESSIONS, query_string=query, headers=admin["headers"])
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def end(client, admin, session_id: str):
    return client.delete(session_path(session_id), headers={**admin["headers"], "User-Agent": BROWSER})


def test_lists_sessions_newest_first_with_filters(env):
    admin = env.accounts.signed_in(superuser=True)
    first, second = env.buy(), env.buy()
    assert env.get("certificates/filter", token=first, device=DEVICE_A,
                   headers={"User-Agent": "Desktop/2.0"}).status_code == 200
    assert env.get("certificates/filter", token=second, device=DEVICE_B).status_code == 200
    env.flush_counters()
    page = listing(env.client, admin)
    assert page["total"] == 2
    newest, oldest = page["items"]
    assert (newest["token_id"], oldest["token_id"]) == (second["id"], first["id"])
    assert oldest["user_id"] == first["user"]["id"] and oldest["device_id"] == DEVICE_A
    assert oldest["ip_address"] == CLIENT_ADDRESS and oldest["user_agent"] == "Desktop/2.0"
    assert oldest["is_active"] is True and oldest["ended_at"] is None and oldest["request_count"] == 1
    assert [s["token_id"] for s in listing(env.client, admin, user_id=first["user"]["id"])["items"]] == [first["id"]]
    assert end(env.client, admin, oldest["id"]).status_code == 204
    assert [s["id"] for s in listing(env.client, admin, active_only="true")["items"]] == [newest["id"]]
    assert listing(env.client, admin, active_only="false")["total"] == 2
    assert listing(env.client, admin, user_id=str(uuid.uuid4()))["total"] == 0


@pytest.mark.parametrize("query", [{"active_only": "perhaps"}, {"user_id": "xyz"}, {"offset": "-5"}])
def test_bad_filters_are_422(client, admin, query):
    response = client.get(SESSIONS, query_string=query, headers=admin["headers"])
    assert response.status_code == 422, response.get_json()
    assert set(response.get_json()["errors"]) == set(query)


def _end_frees_the_token(env) -> None:
    admin = env.accounts.signed_in(superuser=True)
    token = env.buy()
    for _ in range(2):
        assert env.get("certificates/filter", token=token, device=DEVICE_A).status_code == 200
    assert_error(env.get("certificates/filter", token=token, device=DEVICE_B), 409)
    (session,) = env.sessions(token)

    assert end(env.client, admin, str(session.id)).status_code == 204
    response = env.get("certificates/filter", token=token, device=DEVICE_B)
    assert response.status_code == 200, response.get_json()
    ended, current = env.sessions(token)
    assert ended.id == session.id and not ended.is_active and ended.ended_at is not None
    assert current.device_id == DEVICE_B and current.is_active
    assert_error(env.get("certificates/filter", token=token, device=DEVICE_A), 409)  # now B holds it
    assert [e["reason"] for e in env.events("session.ended", token)] == ["admin"]
    (entry,) = audit_rows(env.app, "admin.session_ended")
    assert entry["actor_id"] == admin["id"] and entry["resource_id"] == str(session.id)
    assert entry["details"] == {"user_id": token["user"]["id"], "token_id": token["id"], "device_id": DEVICE_A}
    assert entry["user_agent"] == BROWSER


def test_ending_a_session_lets_another_device_in_on_the_next_request(env):
    _end_frees_the_token(env)


def test_ending_a_session_frees_the_token_without_redis_too(env, monkeypatch):
    use_database_only(monkeypatch)
    _end_frees_the_token(env)


def test_ending_an_ended_session_is_204_and_changes_nothing(env):
    admin = env.accounts.signed_in(superuser=True)
    token = env.buy()
    assert env.get("certificates/filter", token=token).status_code == 200
    (session,) = env.sessions(token)
    assert end(env.client, admin, str(session.id)).status_code == 204
    assert env.get("certificates/filter", token=token, device=DEVICE_B).status_code == 200
    assert end(env.client, admin, str(session.id)).status_code == 204
    # B's newer session and its hold on the token are untouched.
    assert_error(env.get("certificates/filter", token=token, device=DEVICE_A), 409)
    assert len(audit_rows(env.app, "admin.session_ended")) == 1
    assert len(env.events("session.ended", token)) == 1


def test_ending_an_unknown_session_is_404(client, admin):
    assert end(client, admin, str(uuid.uuid4())).status_code == 404
    assert client.delete(f"{SESSIONS}/42", headers=admin["headers"]).status_code == 404
