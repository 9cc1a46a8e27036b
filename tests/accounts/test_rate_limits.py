from __future__ import annotations

import uuid

import pytest


@pytest.fixture
def strict_limits(app):
    app.config.update(RATELIMIT_REGISTER="5 per hour", RATELIMIT_LOGIN_FAILED="5 per hour")
    yield
    app.config.update(RATELIMIT_REGISTER="1000 per hour", RATELIMIT_LOGIN_FAILED="1000 per hour")


def new_user_body() -> dict:
    suffix = uuid.uuid4().hex[:10]
    return {"email": f"u{suffix}@example.com", "username": f"u_{suffix}", "password": "long enough"}


def test_register_is_limited_per_client_ip(client, strict_limits):
    for remaining in (4, 3, 2, 1, 0):
        response = client.post("/api/v1/auth/register", json=new_user_body())
        assert response.status_code == 201
        assert response.headers["X-RateLimit-Limit"] == "5"
        assert response.headers["X-RateLimit-Remaining"] == str(remaining)
        assert int(response.headers["X-RateLimit-Reset"]) > 0
    response = client.post("/api/v1/auth/register", json=new_user_body())
    assert response.status_code == 429
    body = response.get_json()
    assert body["code"] == 429 and body["status"] == "Too Many Requests" and body["message"]
    assert 0 < int(response.headers["Retry-After"]) <= 3600
    other_ip = client.post("/api/v1/auth/register", json=new_user_body(), environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert other_ip.status_code == 201


def test_a_superuser_is_never_limited(client, accounts, strict_limits):
    admin = accounts.signed_in(superuser=True)
    for _ in range(8):
        response = client.post("/api/v1/auth/register", json=new_user_body(), headers=admin["headers"])
        assert response.status_code == 201


def test_only_failed_logins_count_per_ip_and_email(client, accounts, strict_limits):
    user = accounts.register()
    for _ in range(10):
        accounts.login(user["email"], user["password"])
    for _ in range(5):
        wrong = client.post("/api/v1/auth/login", json={"email": user["email"], "password": "wrong password"})
        assert wrong.status_code == 401
    blocked = client.post("/api/v1/auth/login", json={"email": user["email"], "password": user["password"]})
    assert blocked.status_code == 429
    assert "Retry-After" in blocked.headers
    other = accounts.register()
    assert client.post("/api/v1/auth/login",
                       json={"email": other["email"], "password": other["password"]}).status_code == 200
    from_elsewhere = client.post("/api/v1/auth/login", json={"email": user["email"], "password": user["password"]},
                                 environ_base={"REMOTE_ADDR": "10.9.9.9"})
    assert from_elsewhere.status_code == 200


def test_the_registration_429_says_what_is_limited_and_when_it_frees_up(client, strict_limits):
    for _ in range(5):
        first = client.post("/api/v1/auth/register", json=new_user_body())
        assert first.status_code == 201 and "Retry-After" not in first.headers
    refused = client.post("/api/v1/auth/register", json=new_user_body())
    assert refused.status_code == 429
    body = refused.get_json()
    seconds = int(refused.headers["Retry-After"])
    assert 3590 <= seconds <= 3600 and body["retry_after"] == seconds
    assert body["message"].startswith("Too many registrations from this address (at most 5 per hour). Try again in ")
    assert "minute" in body["message"] or "hour" in body["message"], body


def test_failed_logins_count_down_in_the_headers(client, accounts, strict_limits):
    user = accounts.register()
    for remaining in (4, 3, 2, 1, 0):
        wrong = client.post("/api/v1/auth/login", json={"email": user["email"], "password": "wrong password"})
        assert wrong.status_code == 401 and "Retry-After" not in wrong.headers
        assert wrong.headers["X-RateLimit-Remaining"] == str(remaining)
    refused = client.post("/api/v1/auth/login", json={"email": user["email"], "password": "wrong password"})
    assert refused.status_code == 429
    assert refused.get_json()["message"].startswith("Too many failed sign-ins with this e-mail address")


@pytest.mark.parametrize("seconds, words", [(1, "1 second"), (59, "59 seconds"), (60, "1 minute"),
                                            (3599, "59 minutes 59 seconds"), (3600, "1 hour"),
                                            (3661, "1 hour 1 minute 1 second")])
def test_waiting_times_in_words(seconds, words):
    from zenzefi_backend.limit_headers import in_words

    assert in_words(seconds) == words
