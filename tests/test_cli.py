from __future__ import annotations

import json

import sqlalchemy as sa

from zenzefi_backend.accounts.models import User
from zenzefi_backend.extensions import db


def test_create_superuser(app, client):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["users", "create-superuser", "--email", "Root@Example.com", "--username", "root",
                                 "--password", "a long password"])
    assert result.exit_code == 0, result.output
    assert "Superuser root <root@example.com> created" in result.output
    with app.app_context():
        user = db.session.scalar(sa.select(User).where(User.username == "root"))
        assert user.is_superuser
    login = client.post("/api/v1/auth/login", json={"email": "root@example.com", "password": "a long password"})
    assert login.status_code == 200


def test_create_superuser_prompts_for_what_is_missing(app):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["users", "create-superuser", "--email", "p@example.com", "--username", "prompted"],
                           input="a long password\na long password\n")
    assert result.exit_code == 0, result.output


def test_create_superuser_rejects_bad_input_and_duplicates(app):
    runner = app.test_cli_runner()
    bad = runner.invoke(args=["users", "create-superuser", "--email", "nope", "--username", "r", "--password", "x"])
    assert bad.exit_code != 0
    assert "email" in bad.output and "username" in bad.output and "password" in bad.output
    args = ["users", "create-superuser", "--email", "d@example.com", "--username", "dup", "--password", "long enough"]
    assert runner.invoke(args=args).exit_code == 0
    again = runner.invoke(args=args)
    assert again.exit_code != 0 and "already exists" in again.output


def test_jobs_schedule_and_run(app):
    runner = app.test_cli_runner()
    schedule = runner.invoke(args=["jobs", "schedule"])
    assert "health_check" in schedule.output and "every 50 s" in schedule.output
    run = runner.invoke(args=["jobs", "run", "health_check"])
    assert run.exit_code == 0, run.output
    assert json.loads(run.output)["job"] == "health_check"
    unknown = runner.invoke(args=["jobs", "run", "nope"])
    assert unknown.exit_code != 0 and "unknown job" in unknown.output


def test_jobs_status(app):
    result = app.test_cli_runner().invoke(args=["jobs", "status"])
    assert result.exit_code == 0, result.output
    assert "default" in result.output and "workers=" in result.output


def test_set_plan_grants_without_charging(app, client, accounts):
    user = accounts.signed_in()
    runner = app.test_cli_runner()
    result = runner.invoke(args=["users", "set-plan", user["email"], "premium", "--days", "7"])
    assert result.exit_code == 0, result.output
    me = client.get("/api/v1/users/me", headers=user["headers"]).get_json()
    assert me["plan"] == "premium" and me["plan_expires_at"] and me["balance"] == "0.00"
    back = runner.invoke(args=["users", "set-plan", user["email"], "free"])
    assert back.exit_code == 0 and "no expiry" in back.output
    assert client.get("/api/v1/users/me", headers=user["headers"]).get_json()["plan_expires_at"] is None
    assert runner.invoke(args=["users", "set-plan", user["email"], "platinum"]).exit_code != 0
    assert runner.invoke(args=["users", "set-plan", "nobody@example.com", "free"]).exit_code != 0
