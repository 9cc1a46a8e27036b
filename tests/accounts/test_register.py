from __future__ import annotations

import pytest


def register(client, **body):
    base = {"email": "Ann@Example.com", "username": "ann_1", "password": "long enough"}
    base.update(body)
    return client.post("/api/v1/auth/register", json=base)


def test_register_returns_the_user_without_secrets(client):
    response = register(client, full_name="Ann Example")
    assert response.status_code == 201
    user = response.get_json()
    assert user["email"] == "ann@example.com"
    assert user["username"] == "ann_1"
    assert user["full_name"] == "Ann Example"
    assert user["balance"] == "0.00"
    assert user["plan"] == "free" and user["plan_expires_at"] is None
    assert user["is_active"] is True and user["is_superuser"] is False
    assert user["email_notifications"] is True
    assert len(user["referral_code"]) == 12 and user["referral_code"].isalnum()
    assert user["referral_code"] == user["referral_code"].upper()
    assert user["created_at"].endswith("+00:00")
    assert not {"password", "password_hash", "jwt_generation"} & set(user)
    assert "argon2" not in response.get_data(as_text=True)


@pytest.mark.parametrize(
    "second",
    [
        {"email": "ANN@example.COM", "username": "someone_else"},
        {"email": "other@example.com", "username": "ANN_1"},
    ],
)
def test_email_and_username_are_unique_regardless_of_case(client, second):
    assert register(client).status_code == 201
    response = register(client, **second)
    assert response.status_code == 409
    assert response.get_json()["code"] == 409


@pytest.mark.parametrize(
    "body, field",
    [
        ({"email": "not-an-email"}, "email"),
        ({"username": "ab"}, "username"),
        ({"username": "x" * 51}, "username"),
        ({"username": "bad name!"}, "username"),
        ({"password": "short"}, "password"),
        ({"password": "x" * 129}, "password"),
        ({"is_superuser": True}, "is_superuser"),
        ({"balance": "1000.00"}, "balance"),
    ],
)
def test_invalid_or_unknown_fields_are_rejected_and_nothing_is_created(client, accounts, body, field):
    response = register(client, **body)
    assert response.status_code == 422
    error = response.get_json()
    assert error["code"] == 422 and error["status"] == "Unprocessable Entity"
    assert field in error["errors"]
    # Nothing was stored: the same e-mail can still register cleanly.
    assert register(client).status_code == 201


def test_missing_fields_are_each_reported(client):
    response = client.post("/api/v1/auth/register", json={})
    assert response.status_code == 422
    assert set(response.get_json()["errors"]) == {"email", "username", "password"}


def test_malformed_json_is_a_400(client):
    response = client.post("/api/v1/auth/register", data="{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["code"] == 400


def test_referral_code_links_the_referrer(client, app):
    referrer = register(client).get_json()
    response = register(client, email="bob@example.com", username="bob", referral_code=referrer["referral_code"])
    assert response.status_code == 201
    from zenzefi_backend.accounts.models import User
    from zenzefi_backend.extensions import db

    with app.app_context():
        bob = db.session.scalar(db.select(User).where(User.username == "bob"))
        assert str(bob.referred_by_id) == referrer["id"]


def test_referral_code_is_accepted_as_query_parameter(client):
    referrer = register(client).get_json()
    response = client.post(
        f"/api/v1/auth/register?ref={referrer['referral_code'].lower()}",
        json={"email": "bob@example.com", "username": "bob", "password": "long enough"},
    )
    assert response.status_code == 201


def test_unknown_referral_code_is_a_422_and_creates_nothing(client):
    response = register(client, referral_code="NOSUCHCODE00")
    assert response.status_code == 422
    assert "referral_code" in response.get_json()["errors"]
    assert register(client).status_code == 201
