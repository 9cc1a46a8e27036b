"""The hourly purge: idempotency keys older than 24 h and revocations of JWTs that expired anyway go, once;
everything younger stays."""
from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa

from tests.fixtures.race import race_in_app_contexts
from tests.support import postgres_only
from zenzefi_backend.accounts.models import RevokedJwt
from zenzefi_backend.clock import now
from zenzefi_backend.extensions import db
from zenzefi_backend.idempotency import IdempotencyKey
from zenzefi_backend.jobs.maintenance import purge_expired_job


def seed(app, user_id: str, old: int, fresh: int) -> None:
    """`old` purgeable rows and `fresh` keepers of each kind."""
    moment = now()
    owner = uuid.UUID(user_id)
    with app.app_context():
        for index in range(old + fresh):
            is_old = index < old
            db.session.add(IdempotencyKey(
                user_id=owner, key=f"key-{uuid.uuid4().hex}", fingerprint="f" * 64, state="completed",
                created_at=moment - (timedelta(hours=24, minutes=1) if is_old else timedelta(hours=23, minutes=59)),
            ))
            db.session.add(RevokedJwt(
                jti=uuid.uuid4().hex, user_id=owner,
                expires_at=moment + (-timedelta(minutes=1) if is_old else timedelta(minutes=1)),
            ))
        db.session.commit()


def remaining(app) -> tuple[int, int]:
    with app.app_context():
        return (db.session.scalar(sa.select(sa.func.count()).select_from(IdempotencyKey)),
                db.session.scalar(sa.select(sa.func.count()).select_from(RevokedJwt)))


def test_run_twice_purges_once_and_keeps_the_young(app, accounts):
    user = accounts.register()
    base_keys, base_jwts = remaining(app)
    seed(app, user["id"], old=3, fresh=2)
    with app.app_context():
        assert purge_expired_job() == {"idempotency_keys": 3, "revoked_jwts": 3}
        assert purge_expired_job() == {"idempotency_keys": 0, "revoked_jwts": 0}
    assert remaining(app) == (base_keys + 2, base_jwts + 2)


def test_flask_jobs_run_purge_expired(app, accounts):
    user = accounts.register()
    seed(app, user["id"], old=1, fresh=1)
    result = app.test_cli_runner().invoke(args=["jobs", "run", "purge_expired"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["result"] == {"idempotency_keys": 1, "revoked_jwts": 1}


@pytest.mark.postgres
@postgres_only
def test_concurrent_purges_delete_each_row_once(app, accounts):
    user = accounts.register()
    for _ in range(3):
        base_keys, base_jwts = remaining(app)
        seed(app, user["id"], old=40, fresh=5)
        results = race_in_app_contexts(app, purge_expired_job, 6)
        assert sum(r["idempotency_keys"] for r in results) == 40, results
        assert sum(r["revoked_jwts"] for r in results) == 40, results
        assert remaining(app) == (base_keys + 5, base_jwts + 5)
