"""`GET /api/v1/users/me/referrals`: code, link, referees by username, what they earned you."""
from __future__ import annotations

from tests.fixtures.actions import buy_token

from .helpers import MONTH, REFERRALS, WEEK, revoke


def test_needs_a_jwt(client):
    assert client.get(REFERRALS).status_code == 401


def test_a_new_user_has_a_code_and_a_link(client, accounts):
    user = accounts.signed_in()
    body = client.get(REFERRALS, headers=user["headers"]).get_json()
    code = user["referral_code"]
    assert len(code) == 12 and code.isalnum() and code == code.upper()
    assert body == {"referral_code": code, "referral_link": f"http://localhost:3000/register?ref={code}",
                    "total_referrals": 0, "qualifying_referrals": 0, "total_bonus_earned": "0.00",
                    "referred_users": []}


def test_the_link_uses_frontend_url(app, client, accounts, monkeypatch):
    monkeypatch.setitem(app.config, "FRONTEND_URL", "https://zenzefi.example/")
    user = accounts.signed_in()
    link = client.get(REFERRALS, headers=user["headers"]).get_json()["referral_link"]
    assert link == f"https://zenzefi.example/register?ref={user['referral_code']}"
    registered = client.post(f"/api/v1/auth/register?ref={link.rsplit('=', 1)[1]}",
                             json={"email": "via-link@example.com", "username": "via_link", "password": "long enough"})
    assert registered.status_code == 201
    assert client.get(REFERRALS, headers=user["headers"]).get_json()["total_referrals"] == 1


def test_referees_and_bonuses(client, accounts, referrer, referee):
    small = accounts.signed_in(referral_code=referrer["referral_code"])
    accounts.fund(small["id"], "100.00")
    buy_token(client, small, WEEK)
    idle = accounts.signed_in(referral_code=referrer["referral_code"].lower())
    stranger = accounts.signed_in()
    qualifying = buy_token(client, referee, MONTH)

    response = client.get(REFERRALS, headers=referrer["headers"])
    body = response.get_json()
    assert (body["total_referrals"], body["qualifying_referrals"], body["total_bonus_earned"]) == (3, 1, "30.00")
    assert [(u["username"], u["has_qualifying_purchase"]) for u in body["referred_users"]] == [
        (idle["username"], False), (small["username"], False), (referee["username"], True)]
    assert all(set(u) == {"username", "joined_at", "has_qualifying_purchase"} for u in body["referred_users"])
    assert body["referred_users"][0]["joined_at"] == idle["created_at"]
    text = response.get_data(as_text=True)
    for other in (referee, small, idle, stranger):
        assert other["email"] not in text and other["id"] not in text
    assert stranger["username"] not in text

    revoke(client, referee, qualifying["id"])
    after = client.get(REFERRALS, headers=referrer["headers"]).get_json()
    assert (after["qualifying_referrals"], after["total_bonus_earned"]) == (1, "0.00")
    assert client.get(REFERRALS, headers=referee["headers"]).get_json()["total_referrals"] == 0
