"""One spelling per address: Unicode compatibility forms, case and IDNA forms of an e-mail address are the same
address everywhere one is stored or looked up (registration, login and its limit, gifts, admin search, CLI)."""
from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask_migrate import upgrade

from tests.fixtures.actions import buy_token
from tests.support import app_config
from zenzefi_backend.accounts.emails import InvalidEmail, canonical_email

FULLWIDTH_DOMAIN = "x@ｅｘａｍｐｌｅ.com"
PASSWORD = "correct horse 1"


def register(client, email: str, username: str | None = None):
    username = username or f"u_{uuid.uuid4().hex[:8]}"
    return client.post("/api/v1/auth/register", json={"email": email, "username": username, "password": PASSWORD})


def login(client, email: str, password: str = PASSWORD):
    return client.post("/api/v1/auth/login", json={"email": email, "password": password})


@pytest.mark.parametrize("first, second", [
    ("x@example.com", FULLWIDTH_DOMAIN),
    (FULLWIDTH_DOMAIN, "x@example.com"),
    ("x@example.com", "X@ＥＸＡＭＰＬＥ.ＣＯＭ"),
    ("x@example.com", "x@example。com"),              # an ideographic full stop between labels
    ("x@exämple.com", "x@xn--exmple-cua.com"),        # a domain's Unicode and ASCII (IDNA) forms
    ("é@example.com", "e\u0301@example.com"),           # composed and decomposed é
])
def test_one_address_in_another_form_is_a_duplicate(client, first, second):
    assert register(client, first).status_code == 201
    response = register(client, second)
    assert response.status_code == 409, response.get_json()


def test_the_normalised_form_is_stored_and_login_matches_every_form(client):
    created = register(client, "Ann@ＥＸＡＭＰＬＥ.com")
    assert created.status_code == 201 and created.get_json()["email"] == "ann@example.com"
    for spelling in ("ann@example.com", "ANN@EXAMPLE.COM", "Ann@ＥＸＡＭＰＬＥ.com", " ann@example.com "):
        assert login(client, spelling).status_code == 200, spelling


@pytest.mark.parametrize("email", ["ｘ@example.com", "ﬁ@example.com", "x²@example.com"])
def test_compatibility_characters_before_the_at_are_refused(client, email):
    response = register(client, email)
    assert response.status_code == 422
    assert "email" in response.get_json()["errors"] and "email" in response.get_json()["message"]


@pytest.mark.parametrize("email", ["x@example.com", "X@ＥＸＡＭＰＬＥ.com", "Straße@exämple.com",
                                   "e\u0301@example.com"])
def test_the_canonical_form_is_stable(email):
    once = canonical_email(email)
    assert canonical_email(once) == once


def test_invalid_addresses_raise():
    for email in ("nope", "x＠example.com", "ｘ@example.com", "x@example.local"):
        with pytest.raises(InvalidEmail):
            canonical_email(email)


def test_failed_logins_in_other_spellings_share_one_limit(app, client):
    app.config.update(RATELIMIT_LOGIN_FAILED="3 per hour")
    try:
        assert register(client, "limit@example.com").status_code == 201
        for spelling in ("limit@example.com", "LIMIT@ＥＸＡＭＰＬＥ.com", "limit@example。com"):
            assert login(client, spelling, "wrong password").status_code == 401
        assert login(client, "limit@example.com").status_code == 429
    finally:
        app.config.update(RATELIMIT_LOGIN_FAILED="1000 per hour")


def test_a_gift_recipient_is_stored_normalised(client, accounts):
    giver = accounts.signed_in()
    accounts.fund(giver["id"], "100")
    token = buy_token(client, giver)
    response = client.post(f"/api/v1/tokens/{token['id']}/gift", json={"recipient_email": "Friend@ＥＸＡＭＰＬＥ.com"},
                           headers=giver["headers"])
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["recipient_email"] == "friend@example.com"
    shown = client.get(f"/api/v1/tokens/{token['id']}", headers=giver["headers"]).get_json()
    assert shown["gifted_to_email"] == "friend@example.com"


def test_admin_search_folds_compatibility_forms(client, accounts):
    admin = accounts.signed_in(superuser=True)
    assert register(client, "searched@example.com", "searched_one").status_code == 201
    found = client.get("/api/v1/admin/users?search=ＳＥＡＲＣＨＥＤ@ｅｘａｍｐｌｅ",
                       headers=admin["headers"]).get_json()
    assert [user["email"] for user in found["items"]] == ["searched@example.com"]


def test_cli_commands_find_a_user_by_any_spelling(app, client):
    assert register(client, "cli@example.com").status_code == 201
    runner = app.test_cli_runner()
    result = runner.invoke(args=["users", "set-plan", "CLI@ＥＸＡＭＰＬＥ.com", "premium"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(args=["users", "deactivate", "cli@example。com"])
    assert result.exit_code == 0, result.output
    assert login(client, "cli@example.com").status_code == 401


def test_cli_create_superuser_stores_the_normalised_form(app, client):
    result = app.test_cli_runner().invoke(args=["users", "create-superuser", "--email", "Root@ＥＸＡＭＰＬＥ.com",
                                                "--username", "rooted", "--password", PASSWORD])
    assert result.exit_code == 0, result.output
    assert "root@example.com" in result.output
    assert register(client, "root@example.com").status_code == 409


def test_the_migration_normalises_stored_addresses_and_leaves_collisions_alone(backends, tmp_path: Path):
    """Rows written by the old code (stripped and lower-cased only) get their canonical form, except where
    two accounts would then share one: the one already in that form, or else the oldest, keeps it."""
    from zenzefi_backend import create_app
    from zenzefi_backend.extensions import db

    app = create_app(app_config(backends, tmp_path, DATABASE_URL=f"sqlite:///{tmp_path / 'old.db'}"))
    rows = [  # (email as the old code stored it, created_at)
        ("a@ｅｘａｍｐｌｅ.com", "2026-01-01"),      # alone: becomes a@example.com
        ("b@example.com", "2026-01-02"),          # already canonical: keeps it …
        ("b@ｅｘａｍｐｌｅ.com", "2026-01-01"),      # … so this older one is left as it was
        ("c@ｅｘａｍｐｌｅ.com", "2026-01-01"),      # neither canonical: the oldest wins
        ("c@example。com", "2026-01-03"),
        ("not an address", "2026-01-01"),         # refused by today's validator: untouched
    ]
    with app.app_context():
        upgrade(revision="0010_payment_providers")
        for index, (email, created) in enumerate(rows):
            db.session.execute(sa.text(
                "INSERT INTO users (id, email, username, password_hash, is_active, is_superuser, plan, referral_code, "
                "balance, email_notifications, jwt_generation, created_at, updated_at) VALUES (:id, :email, :name, "
                "'x', 1, 0, 'free', :code, 0, 1, 0, :created, :created)"),
                {"id": uuid.uuid4().hex, "email": email, "name": f"old{index}", "code": f"CODE{index:08d}",
                 "created": f"{created} 00:00:00"})
        db.session.commit()
        upgrade()
        stored = db.session.execute(sa.text("SELECT username, email FROM users ORDER BY username")).all()
        db.session.remove()
        db.engine.dispose()
    assert dict(stored) == {"old0": "a@example.com", "old1": "b@example.com", "old2": "b@ｅｘａｍｐｌｅ.com",
                            "old3": "c@example.com", "old4": "c@example。com", "old5": "not an address"}
