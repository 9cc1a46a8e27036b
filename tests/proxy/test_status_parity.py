"""A token's status is defined once (tokens/models.py, Python and SQL); the proxy's Lua ADMIT script holds the only
other copy of "usable". Over every state × moment, the four answers agree: the model in Python, the same
expression run by the database, the proxy's cached copy, and the script itself (real Redis on the PostgreSQL pass,
fakeredis + lupa embedded)."""
from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from zenzefi_backend.accounts.models import User
from zenzefi_backend.extensions import db, get_redis
from zenzefi_backend.proxy.admission import run_admit
from zenzefi_backend.proxy.cache import TOKEN_KEY, USER_KEY, TokenState, UserState
from zenzefi_backend.tokens.models import STATUSES, AccessToken

EXPIRES = datetime(2030, 1, 1, 12, 0, 0, 500_000, tzinfo=UTC)
ACTIVATED = EXPIRES - timedelta(hours=24)
MOMENTS = {
    "long before": EXPIRES - timedelta(hours=1),
    "a microsecond before": EXPIRES - timedelta(microseconds=1),
    "at expiry": EXPIRES,
    "a microsecond after": EXPIRES + timedelta(microseconds=1),
    "long after": EXPIRES + timedelta(days=3),
}
# revoked × activated × expiry set: (never activated with an expiry cannot happen; its answer is still pinned)
STATES = list(itertools.product((False, True), (False, True), (False, True)))
EXPECTED_STATUS = {  # (revoked, activated, past expiry) → status
    (True, False, False): "revoked", (True, False, True): "revoked", (True, True, False): "revoked",
    (True, True, True): "revoked", (False, False, False): "ready", (False, False, True): "ready",
    (False, True, False): "active", (False, True, True): "expired",
}


@pytest.fixture
def tokens(app_ctx) -> dict[tuple[bool, bool, bool], AccessToken]:
    user = User(id=uuid.uuid4(), email="parity@example.com", username="parity", password_hash="-",
                referral_code="PARITY0001")
    db.session.add(user)
    made = {}
    for revoked, activated, has_expiry in STATES:
        made[(revoked, activated, has_expiry)] = AccessToken(
            id=uuid.uuid4(), user_id=user.id, token_hash=uuid.uuid4().hex * 2, token_hint="abcdef...wxyz",
            duration_hours=24, scope="full", paid_znc=1, created_at=ACTIVATED - timedelta(hours=1),
            activated_at=ACTIVATED if activated else None, expires_at=EXPIRES if has_expiry else None,
            revoked_at=ACTIVATED if revoked else None)
    db.session.add_all(made.values())
    db.session.commit()
    return made


def _lua_verdict(token: AccessToken, moment: datetime) -> str:
    client = get_redis()
    client.set(TOKEN_KEY + token.token_hash, TokenState.of(token).dumps())
    client.set(USER_KEY + str(token.user_id), UserState(1, "free").dumps())
    reply = run_admit(client, token.token_hash, device_id="parity-device", path_ok=True,
                      certificate_path=False, bytes_in=0, moment=moment, idle_seconds=60,
                      rate_limits_json='{"free": 1000}', bytes_out=[])
    return reply[0]


def _in_sql(expression, token: AccessToken):
    return db.session.scalar(sa.select(expression).where(AccessToken.id == token.id))


@pytest.mark.parametrize("moment_name", list(MOMENTS))
def test_every_copy_of_the_status_rule_agrees(tokens, moment_name):
    moment = MOMENTS[moment_name]
    past_expiry = moment >= EXPIRES
    for (revoked, activated, has_expiry), token in tokens.items():
        case = f"revoked={revoked} activated={activated} expiry={has_expiry} {moment_name}"
        status = EXPECTED_STATUS[(revoked, activated, has_expiry and past_expiry)]
        usable = not revoked and not (has_expiry and past_expiry)

        assert token.status_at(moment) == status, case
        assert _in_sql(AccessToken.status_at(moment), token) == status, case
        for each in STATUSES:
            assert bool(_in_sql(AccessToken.status_is(each, moment), token)) == (each == status), (case, each)

        assert token.usable_at(moment) is usable, case
        assert bool(_in_sql(AccessToken.usable_at(moment), token)) is usable, case
        assert TokenState.of(token).usable_at(moment) is usable, case
        # The script refuses exactly the unusable ones; a usable token goes on to claim a device.
        assert _lua_verdict(token, moment) == ("claim" if usable else "invalid"), case

        assert token.in_use_at(moment) is (status == "active"), case
        assert bool(_in_sql(AccessToken.in_use_at(moment), token)) is (status == "active"), case
        assert token.expired_at(moment) is (status == "expired"), case
        assert bool(_in_sql(AccessToken.expired_at(moment), token)) is (status == "expired"), case
