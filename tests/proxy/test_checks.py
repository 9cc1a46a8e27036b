"""SPEC §3.6's checks, one test per row, and pairs of failures proving the order they run in.

Every rejected request is asserted on the upstream's own request log: it must stay empty. Each test runs
twice: on the Redis fast path, and with Redis treated as unreachable (every check against the database).
"""
from __future__ import annotations

from datetime import timedelta

import pytest

from tests.fixtures.proxy import (
    DEVICE_A,
    DEVICE_B,
    ProxyEnv,
    assert_error,
    use_database_only,
)
from zenzefi_backend import clock
from zenzefi_backend.clock import now

RATE_LIMIT = 3


@pytest.fixture(params=["redis", "database"])
def via(request, monkeypatch) -> str:
    if request.param == "database":
        use_database_only(monkeypatch)
    return request.param


@pytest.fixture
def env(make_env, via) -> ProxyEnv:
    return make_env(RATELIMIT_PROXY_FREE=RATE_LIMIT)


def rejected(env: ProxyEnv, response, code: int, mentions: str | None = None) -> dict:
    body = assert_error(response, code, mentions)
    assert env.upstream.log == [], "a rejected request reached the upstream"
    return body


def held_by_a(env: ProxyEnv, token: dict, path: str = "certificates/filter") -> None:
    """Device A uses the token once (so it holds it); the upstream log is emptied afterwards."""
    assert env.get(path, token=token, device=DEVICE_A).status_code == 200
    env.upstream.clear()


# --- one test per row ----------------------------------------------------------------------------


def test_missing_device_id_is_403(env, token):
    rejected(env, env.get("certificates/filter", token=token, device=None), 403, "X-Device-ID")
    assert env.token_row(token).activated_at is None


@pytest.mark.parametrize("device", [
    "a" * 7,  # too short
    "b" * 256,  # too long
    "",  # empty
    "device 12345",  # space
    "device/12345",  # slash
    "device%2012345",  # percent
    "device\t12345",  # control character
    "devíce-12345",  # not ASCII
    "device;12345", "device,12345", "device@12345", "<device12345>",
], ids=["7-chars", "256-chars", "empty", "space", "slash", "percent", "tab", "non-ascii", "semicolon", "comma",
        "at", "angle-brackets"])
def test_malformed_device_id_is_400(env, token, device):
    rejected(env, env.get("certificates/filter", token=token, device=device), 400, "X-Device-ID")
    assert env.token_row(token).activated_at is None


@pytest.mark.parametrize("device", ["a" * 8, "Z" * 255, "0123456789abcdef0123", "dev.ice_1:2-3"],
                         ids=["8-chars", "255-chars", "hex-fingerprint", "every-allowed-symbol"])
def test_well_formed_device_ids_are_accepted(env, token, device):
    assert env.get("certificates/filter", token=token, device=device).status_code == 200
    assert len(env.upstream.log) == 1


@pytest.mark.parametrize("header", [None, ""], ids=["absent", "empty"])
def test_missing_access_token_is_401(env, header):
    rejected(env, env.get("certificates/filter", token=header, device=DEVICE_A), 401, "X-Access-Token")


def test_unknown_token_is_401(env, token):
    rejected(env, env.get("certificates/filter", token="x" * 64), 401)
    rejected(env, env.get("certificates/filter", token=token["token"][:-1] + "?"), 401)
    # asked twice: the negative cache answers the same
    rejected(env, env.get("certificates/filter", token="x" * 64), 401)


def test_revoked_token_is_401(env, token):
    assert env.revoke(token).status_code == 200
    rejected(env, env.get("certificates/filter", token=token), 401)


def test_revoked_after_use_is_401(env, token):
    held_by_a(env, token)
    assert env.revoke(token).status_code == 200
    rejected(env, env.get("certificates/filter", token=token), 401)


def test_expired_token_in_the_database_is_401(env, token):
    past = now() - timedelta(hours=2)
    env.update_token(token, activated_at=past, expires_at=past + timedelta(hours=1))
    rejected(env, env.get("certificates/filter", token=token), 401)


def test_token_expired_by_the_clock_is_401_even_when_cached(env, token):
    held_by_a(env, token)  # activated, and (on the fast path) cached
    with clock.travel(timedelta(hours=1, seconds=1)):
        rejected(env, env.get("certificates/filter", token=token), 401)
    with clock.travel(timedelta(minutes=59, seconds=50)):  # just before the end it still works
        assert env.get("certificates/filter", token=token).status_code == 200


def test_token_of_an_inactive_owner_is_401(env, token):
    env.accounts.set_flags(token["user"]["id"], is_active=False)
    rejected(env, env.get("certificates/filter", token=token), 401)


def test_path_not_canonical_is_400(env, token):
    rejected(env, env.get("certificates/details/../../admin", token=token), 400)


def test_scope_forbids_the_path_is_403(env):
    token = env.buy(scope="certificates_only")
    rejected(env, env.get("admin/users", token=token), 403, "scope")
    assert env.token_row(token).activated_at is None


def test_another_device_is_409_with_retry_after(env, token):
    held_by_a(env, token)
    response = env.get("certificates/filter", token=token, device=DEVICE_B)
    body = rejected(env, response, 409, "device")
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= 300
    assert body.get("retry_after", retry_after) == retry_after
    # The holder is not disturbed, from any address.
    assert env.get("certificates/filter", token=token, device=DEVICE_A,
                   environ_base={"REMOTE_ADDR": "203.0.113.99"}).status_code == 200


def test_rate_limit_is_429_with_retry_after(env, token, fresh_rate_window):
    for _ in range(RATE_LIMIT):
        assert env.get("certificates/filter", token=token).status_code == 200
    env.upstream.clear()
    response = env.get("certificates/filter", token=token)
    rejected(env, response, 429)
    assert 1 <= int(response.headers["Retry-After"]) <= 61
    # Per token: another token of the same user is not limited.
    other = env.buy(token["user"])
    assert env.get("certificates/filter", token=other, device=DEVICE_B).status_code == 200



def test_the_rate_window_is_a_minute_of_the_movable_clock(env, token, fresh_rate_window):
    for _ in range(RATE_LIMIT):
        assert env.get("certificates/filter", token=token).status_code == 200
    env.upstream.clear()
    rejected(env, env.get("certificates/filter", token=token), 429)
    with clock.travel(timedelta(seconds=30)):  # still the same minute
        rejected(env, env.get("certificates/filter", token=token), 429)
    with clock.travel(timedelta(minutes=1)):  # the next one
        assert env.get("certificates/filter", token=token).status_code == 200

# --- pairs of failures: the earlier check wins ---------------------------------------------------


def test_missing_device_before_missing_token(env):
    rejected(env, env.get("a//b", token=None, device=None), 403, "X-Device-ID")


def test_malformed_device_before_missing_token(env):
    rejected(env, env.get("certificates/filter", token=None, device="short"), 400, "X-Device-ID")


def test_malformed_device_before_invalid_token(env):
    rejected(env, env.get("certificates/filter", token="nope" * 16, device="bad device id"), 400, "X-Device-ID")


def test_missing_token_before_bad_path(env):
    rejected(env, env.get("certificates/%2e%2e/admin", token=None), 401, "X-Access-Token")


def test_invalid_token_before_bad_path(env):
    rejected(env, env.get("certificates/%2e%2e/admin", token="z" * 64), 401)


def test_revoked_token_before_bad_path_and_other_device(env, token):
    held_by_a(env, token)
    assert env.revoke(token).status_code == 200
    rejected(env, env.get("certificates/%2e%2e/admin", token=token, device=DEVICE_B), 401)


def test_inactive_owner_before_scope(env):
    token = env.buy(scope="certificates_only")
    env.accounts.set_flags(token["user"]["id"], is_active=False)
    rejected(env, env.get("admin", token=token), 401)


def test_bad_path_before_wrong_scope(env):
    token = env.buy(scope="certificates_only")
    rejected(env, env.get("admin/./users", token=token), 400)
    rejected(env, env.get("certificates/filter/../../admin", token=token), 400)


def test_bad_path_before_other_device(env, token):
    held_by_a(env, token)
    rejected(env, env.get("a//b", token=token, device=DEVICE_B), 400)


def test_wrong_scope_before_other_device(env):
    token = env.buy(scope="certificates_only")
    held_by_a(env, token)
    rejected(env, env.get("admin", token=token, device=DEVICE_B), 403, "scope")


def test_other_device_before_rate_limit(env, token, fresh_rate_window):
    for _ in range(RATE_LIMIT):
        assert env.get("certificates/filter", token=token).status_code == 200
    env.upstream.clear()
    rejected(env, env.get("certificates/filter", token=token), 429)
    rejected(env, env.get("certificates/filter", token=token, device=DEVICE_B), 409)


def test_bad_path_and_scope_before_rate_limit(env, fresh_rate_window):
    token = env.buy(scope="certificates_only")
    for _ in range(RATE_LIMIT):
        assert env.get("certificates/filter", token=token).status_code == 200
    env.upstream.clear()
    rejected(env, env.get("certificates/filter", token=token), 429)
    rejected(env, env.get("a/../b", token=token), 400)
    rejected(env, env.get("admin", token=token), 403)
