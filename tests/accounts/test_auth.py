from __future__ import annotations

import statistics
import time

import pytest


def test_login_returns_a_token_pair(client, accounts):
    user = accounts.register()
    response = client.post("/api/v1/auth/login", json={"email": user["email"].upper(), "password": user["password"]})
    assert response.status_code == 200
    body = response.get_json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 3600
    assert body["access_token"] and body["refresh_token"]
    me = client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200 and me.get_json()["id"] == user["id"]


def test_unknown_email_wrong_password_and_inactive_user_get_the_same_401(client, accounts):
    user = accounts.register()
    inactive = accounts.register()
    accounts.set_flags(inactive["id"], is_active=False)
    attempts = [
        {"email": "nobody@example.com", "password": "whatever1"},
        {"email": user["email"], "password": "wrong password"},
        {"email": inactive["email"], "password": inactive["password"]},
    ]
    bodies = []
    for attempt in attempts:
        response = client.post("/api/v1/auth/login", json=attempt)
        assert response.status_code == 401
        bodies.append(response.get_json())
    assert bodies[0] == bodies[1] == bodies[2]
    assert bodies[0] == {"code": 401, "status": "Unauthorized", "message": "Invalid e-mail or password."}


def test_unknown_email_costs_as_much_as_a_wrong_password(app, client, accounts):
    """The decoy hash makes probing for registered e-mails by timing useless."""
    app.config.update(PASSWORD_HASH_TIME_COST=2, PASSWORD_HASH_MEMORY_KIB=32768)
    try:
        user = accounts.register()

        def median_seconds(email: str) -> float:
            samples = []
            for _ in range(5):
                started = time.perf_counter()
                client.post("/api/v1/auth/login", json={"email": email, "password": "wrong password"})
                samples.append(time.perf_counter() - started)
            return statistics.median(samples)

        known, unknown = median_seconds(user["email"]), median_seconds("nobody@example.com")
    finally:
        app.config.update(PASSWORD_HASH_TIME_COST=1, PASSWORD_HASH_MEMORY_KIB=1024)
    assert unknown > known * 0.5, (known, unknown)


def test_login_audits_success_and_failure(app, client, accounts):
    user = accounts.register()
    client.post("/api/v1/auth/login", json={"email": user["email"], "password": "wrong password"})
    accounts.login(user["email"], user["password"])
    from zenzefi_backend.audit.models import AuditLog
    from zenzefi_backend.extensions import db

    with app.app_context():
        actions = [row.action for row in db.session.scalars(db.select(AuditLog).order_by(AuditLog.created_at))]
    assert actions == ["user.registered", "auth.login_failed", "auth.login"]


def test_refresh_issues_a_new_access_token(client, accounts):
    user = accounts.signed_in()
    response = client.post("/api/v1/auth/refresh", headers={"Authorization": f"Bearer {user['refresh_token']}"})
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"access_token", "token_type", "expires_in"}
    me = client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200


def test_access_token_is_not_a_refresh_token(client, accounts):
    user = accounts.signed_in()
    response = client.post("/api/v1/auth/refresh", headers=user["headers"])
    assert response.status_code == 401
    assert response.get_json()["code"] == 401


def test_refresh_token_is_not_an_access_token(client, accounts):
    user = accounts.signed_in()
    response = client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {user['refresh_token']}"})
    assert response.status_code == 401


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer not.a.jwt", "Basic abc", "Bearer " + "x" * 40])
def test_missing_or_garbage_credentials_are_401_json(client, header):
    headers = {"Authorization": header} if header else {}
    response = client.get("/api/v1/users/me", headers=headers)
    assert response.status_code == 401
    body = response.get_json()
    assert body["code"] == 401 and body["status"] == "Unauthorized" and body["message"]


def test_token_signed_with_another_key_is_rejected(client, accounts):
    import jwt

    user = accounts.register()
    forged = jwt.encode({"sub": user["id"], "type": "access", "jti": "x", "gen": 0}, "another-key" * 4, "HS256")
    response = client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {forged}"})
    assert response.status_code == 401


def test_logout_revokes_the_access_and_the_refresh_token(client, accounts):
    user = accounts.signed_in()
    response = client.post("/api/v1/auth/logout", headers=user["headers"],
                           json={"refresh_token": user["refresh_token"]})
    assert response.status_code == 204
    assert client.get("/api/v1/users/me", headers=user["headers"]).status_code == 401
    refresh = client.post("/api/v1/auth/refresh", headers={"Authorization": f"Bearer {user['refresh_token']}"})
    assert refresh.status_code == 401


def test_logout_without_body_revokes_only_the_access_token(client, accounts):
    user = accounts.signed_in()
    assert client.post("/api/v1/auth/logout", headers=user["headers"]).status_code == 204
    assert client.get("/api/v1/users/me", headers=user["headers"]).status_code == 401
    refresh = client.post("/api/v1/auth/refresh", headers={"Authorization": f"Bearer {user['refresh_token']}"})
    assert refresh.status_code == 200


def test_logout_rejects_someone_elses_refresh_token_and_changes_nothing(client, accounts):
    alice, bob = accounts.signed_in(), accounts.signed_in()
    response = client.post("/api/v1/auth/logout", headers=alice["headers"],
                           json={"refresh_token": bob["refresh_token"]})
    assert response.status_code == 422
    assert client.get("/api/v1/users/me", headers=alice["headers"]).status_code == 200
    refresh = client.post("/api/v1/auth/refresh", headers={"Authorization": f"Bearer {bob['refresh_token']}"})
    assert refresh.status_code == 200


def test_other_sessions_survive_a_logout(client, accounts):
    user = accounts.signed_in()
    second = accounts.login(user["email"], user["password"])
    client.post("/api/v1/auth/logout", headers=user["headers"])
    me = client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {second['access_token']}"})
    assert me.status_code == 200


def test_deactivated_user_is_locked_out_at_once(client, accounts):
    user = accounts.signed_in()
    accounts.set_flags(user["id"], is_active=False)
    assert client.get("/api/v1/users/me", headers=user["headers"]).status_code == 401
    refresh = client.post("/api/v1/auth/refresh", headers={"Authorization": f"Bearer {user['refresh_token']}"})
    assert refresh.status_code == 401
    login = client.post("/api/v1/auth/login", json={"email": user["email"], "password": user["password"]})
    assert login.status_code == 401


def test_expired_access_token_is_rejected(app, client, accounts):
    from datetime import timedelta

    user = accounts.register()
    app.config["JWT_ACCESS_TOKEN_EXPIRES"] = timedelta(seconds=-1)
    try:
        tokens = accounts.login(user["email"], user["password"])
    finally:
        app.config["JWT_ACCESS_TOKEN_EXPIRES"] = timedelta(minutes=60)
    response = client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert response.status_code == 401
    assert response.get_json()["message"] == "Token has expired."
