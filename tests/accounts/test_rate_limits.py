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
