"""The hot path: no SQL at all once warm; with Redis down, served from PostgreSQL with the same rules, and
back on the fast path by itself when Redis returns. Invalidation must survive both."""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.e2e.harness import TcpRelay
from tests.fixtures.proxy import (
    DEVICE_A,
    DEVICE_B,
    ProxyEnv,
    Reply,
    assert_error,
    closed_port,
    flask_activity,
    pattern,
)
from tests.support import REAL_SERVICES_REASON, dead_redis
from zenzefi_backend.clock import ensure_utc, now
from zenzefi_backend.proxy import admission, cache
from zenzefi_backend.tokens.models import hash_secret

# --- no SQL once warm -----------------------------------------------------------------------------


def test_warm_proxied_requests_execute_no_sql(env, token):
    assert env.get("certificates/filter", token=token).status_code == 200  # warm-up: may read the database
    with env.count_sql() as statements, flask_activity(env) as flask:
        assert env.get("certificates/filter?page=2", token=token).status_code == 200
        assert env.get("certificates/details/42", token=token).status_code == 200
    assert statements == []
    assert flask == {"requests": 0, "app_contexts": 0}  # served by the WSGI fast path, without any Flask context


def test_warm_requests_with_bodies_and_big_answers_execute_no_sql(env, token, upstream):
    upstream.reply("/certificates/export", Reply(body=pattern(1_000_000)))
    assert env.get("certificates/filter", token=token).status_code == 200
    with env.count_sql() as statements:
        assert env.call("POST", "certificates/import", token=token, data=pattern(50_000)).status_code == 200
        response = env.get("certificates/export", token=token)
        assert response.status_code == 200 and len(response.get_data()) == 1_000_000
        assert env.call("DELETE", "certificates/remove/1", token=token).status_code == 200
    assert statements == []


def test_warm_rejections_and_status_execute_no_sql(env, token):
    assert env.get("certificates/filter", token=token).status_code == 200
    assert env.status(token).status_code == 200
    assert_error(env.get("certificates/filter", token="u" * 64), 401)  # the unknown secret is remembered too
    with env.count_sql() as statements:
        assert env.status(token).status_code == 200
        assert_error(env.get("certificates/filter", token=token, device=DEVICE_B), 409)
        assert_error(env.get("a/../b", token=token), 400)
        assert_error(env.get("certificates/filter", token="u" * 64), 401)
    assert statements == []


def test_a_second_token_warms_up_on_its_own(env, token):
    other = env.buy(token["user"])
    assert env.get("certificates/filter", token=token).status_code == 200
    assert env.get("certificates/filter", token=other, device=DEVICE_B).status_code == 200
    with env.count_sql() as statements:
        for _ in range(3):
            assert env.get("certificates/filter", token=token).status_code == 200
            assert env.get("certificates/filter", token=other, device=DEVICE_B).status_code == 200
    assert statements == []


# --- the cached token entry ---------------------------------------------------------------------------


@pytest.mark.parametrize("expired", [False, True], ids=["valid", "expired"])
def test_token_entries_cached_in_milliseconds_by_the_previous_version_are_still_honoured(env, token, expired):
    """Until their 5 minutes run out after a deploy, entries with `activated_at`/`expires_at` in epoch ms (the
    format before microseconds) are read as such, by the ADMIT script and by /status alike."""
    assert env.get("certificates/filter", token=token).status_code == 200  # activated and cached
    row = env.token_row(token)
    expires = now() - timedelta(seconds=1) if expired else row.expires_at
    previous_format = {"id": token["id"], "user_id": token["user"]["id"], "scope": "full", "duration_hours": 1,
                       "activated_at": int(row.activated_at.timestamp() * 1000),
                       "expires_at": int(expires.timestamp() * 1000), "revoked": 0}
    with env.ctx():
        cache.redis_state.client.set(cache.TOKEN_KEY + hash_secret(token["token"]),
                                     json.dumps(previous_format), ex=cache.TOKEN_TTL_SECONDS)
    with env.count_sql() as statements:
        if expired:  # the cached entry decides, as it would have in the previous version
            assert_error(env.get("certificates/filter", token=token), 401)
            assert_error(env.status(token), 401)
        else:
            assert env.get("certificates/filter", token=token).status_code == 200
            shown = datetime.fromisoformat(env.status(token).get_json()["expires_at"])
            assert abs(shown - ensure_utc(row.expires_at)) < timedelta(milliseconds=1)
    assert statements == []


# --- a revoke racing a cache fill --------------------------------------------------------------------


def test_a_revoke_racing_a_cache_fill_still_wins(env, token, monkeypatch):
    """Request X reads the token from the database; the owner revokes (and the cache entry is deleted);
    then X writes what it read into the cache. Every request after the revoke answered must be 401."""
    assert env.get("certificates/filter", token=token).status_code == 200  # activated, cached
    with env.ctx():  # the cached entry's TTL ran out: the next request fills the cache again
        cache.redis_state.client.delete(cache.TOKEN_KEY + hash_secret(token["token"]))
    read_from_database = admission.token_from_database
    revoked = []

    def read_then_revoke(token_hash):
        found = read_from_database(token_hash)
        if not revoked:
            nested = env.app.test_client()  # the owner, elsewhere
            revoked.append(nested.delete(f"/api/v1/tokens/{token['id']}", headers=token["user"]["headers"]).status_code)
        return found

    monkeypatch.setattr(admission, "token_from_database", read_then_revoke)
    env.get("certificates/filter", token=token)  # concurrent with the revoke: either answer is fine
    assert revoked == [200]
    monkeypatch.setattr(admission, "token_from_database", read_from_database)
    assert_error(env.get("certificates/filter", token=token), 401)


# --- a gift while the giver's process cannot reach Redis ----------------------------------------------


def test_a_secret_retired_by_a_gift_during_a_redis_blip_is_refused_by_every_worker_after_the_sweep(make_env,
                                                                                                  monkeypatch):
    """The gift's tombstone for the old secret cannot reach Redis (this process sees a blip); other workers still
    find the old secret cached as valid, and the giver's device as the holder. The periodic sweep repeats the
    invalidation as it does a revoke's — the old hash is kept for it — so afterwards no worker accepts the old
    secret, and the recipient's device is not kept out by the giver's."""
    from zenzefi_backend.extensions import redis_connection
    from zenzefi_backend.jobs.proxy import sweep_proxy_sessions
    from zenzefi_backend.tokens import gifts

    env = make_env(ZENZEFI_UPSTREAM_URL=f"http://127.0.0.1:{closed_port()}")  # admitted requests end in 502
    token = env.buy()
    assert_error(env.get("certificates/filter", token=token), 502)  # cached as valid, device A holds it, still ready
    new_secret = "n" * 64
    monkeypatch.setattr(gifts, "new_secret", lambda: new_secret)
    alive = env.app.extensions[redis_connection.extension_key]
    monkeypatch.setitem(env.app.extensions, redis_connection.extension_key, dead_redis())
    assert env.gift(token).status_code == 200  # the database is the truth; only the cache writes failed
    monkeypatch.setitem(env.app.extensions, redis_connection.extension_key, alive)
    # Now another worker, which never saw Redis fail and so has no reason to distrust the cache.
    monkeypatch.setattr(cache.redis_state, "_stale", False)
    monkeypatch.setattr(cache.redis_state, "_down_until", 0.0)
    with env.ctx():
        assert cache.redis_state.cached_token(hash_secret(token["token"])) is not None

    with env.ctx():
        swept = sweep_proxy_sessions()
    for device in (DEVICE_A, DEVICE_B):
        assert_error(env.get("certificates/filter", token=token, device=device), 401)
    assert_error(env.status(token), 401)
    assert_error(env.get("certificates/filter", token=new_secret, device=DEVICE_B), 502)  # admitted, not a 409
    assert swept["reasserted"] == 1
    with env.ctx():
        sweep_proxy_sessions()  # repeated while the gift is recent: it leaves the recipient's device alone
    with env.count_sql() as statements:
        assert_error(env.get("certificates/filter", token=new_secret, device=DEVICE_B), 502)
        assert_error(env.get("certificates/filter", token=token, device=DEVICE_A), 401)
    assert statements == []  # both answered from Redis


# --- Redis down: PostgreSQL decides, then back to the fast path ---------------------------------------


@pytest.fixture
def redis_relay(backends) -> Iterator[TcpRelay]:
    if not backends.is_postgres or backends.redis_url is None:
        pytest.skip(REAL_SERVICES_REASON)
    parts = urlsplit(backends.redis_url)
    relay = TcpRelay(parts.hostname or "127.0.0.1", parts.port or 6379).start()
    yield relay
    relay.stop()


@pytest.fixture
def relayed_env(make_env, backends, redis_relay) -> ProxyEnv:
    parts = urlsplit(backends.redis_url)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@{redis_relay.address}" if credentials else redis_relay.address
    return make_env(REDIS_URL=urlunsplit(parts._replace(netloc=netloc)))


def wait_for_redis_retry() -> None:
    time.sleep(cache.REDIS_RETRY_SECONDS + 0.2)


def timed(call):
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


def test_redis_down_is_served_from_the_database_with_the_device_rule(relayed_env, redis_relay):
    env = relayed_env
    held, doomed = env.buy(), env.buy()
    for token in (held, doomed):
        for _ in range(2):
            assert env.get("certificates/filter", token=token).status_code == 200
    with env.count_sql() as statements:
        assert env.get("certificates/filter", token=held).status_code == 200
    assert statements == []  # on the fast path before the outage

    redis_relay.stop()
    response, seconds = timed(lambda: env.get("certificates/filter", token=held))
    assert response.status_code == 200 and seconds < 3.0
    for _ in range(3):
        response, seconds = timed(lambda: env.get("certificates/details/7", token=held))
        assert response.status_code == 200 and seconds < 1.0  # the outage costs one failure, not one per request
    response = env.get("certificates/filter", token=held, device=DEVICE_B)
    assert_error(response, 409)
    assert int(response.headers["Retry-After"]) >= 1
    assert env.revoke(doomed).status_code == 200
    assert_error(env.get("certificates/filter", token=doomed), 401)
    fresh = env.buy()
    assert env.get("certificates/filter", token=fresh, device=DEVICE_B).status_code == 200  # first use, no Redis
    assert env.token_row(fresh).activated_at is not None
    assert_error(env.get("certificates/filter", token=fresh, device=DEVICE_A), 409)
    assert env.status(held).get_json()["status"] == "active"
    with env.count_sql() as statements:
        assert env.get("certificates/filter", token=held).status_code == 200
    assert statements, "without Redis the database must have been asked"

    redis_relay.start()
    wait_for_redis_retry()
    for token, device in ((held, DEVICE_A), (fresh, DEVICE_B)):
        assert env.get("certificates/filter", token=token, device=device).status_code == 200  # warm-up
    with env.count_sql() as statements:
        assert env.get("certificates/filter", token=held).status_code == 200
        assert env.get("certificates/filter", token=fresh, device=DEVICE_B).status_code == 200
        assert_error(env.get("certificates/filter", token=held, device=DEVICE_B), 409)
    assert statements == []  # back on the fast path by itself
    (session,) = [s for s in env.sessions(held) if s.is_active]
    assert session.device_id == DEVICE_A


def test_sessions_opened_without_redis_count_and_close_normally(relayed_env, redis_relay):
    env = relayed_env
    token = env.buy()
    redis_relay.stop()
    for _ in range(3):
        assert env.get("certificates/filter", token=token).status_code == 200
    (session,) = env.sessions(token)
    assert session.request_count == 3 and session.bytes_out == 3 * len(b"upstream ok")
    redis_relay.start()
    wait_for_redis_retry()
    for _ in range(2):
        assert env.get("certificates/filter", token=token).status_code == 200
    env.flush_counters()
    (session,) = env.sessions(token)
    assert session.request_count == 5 and session.is_active


@pytest.mark.parametrize("first", ["proxy", "status"])
@pytest.mark.parametrize("invalidation", ["revoke", "deactivate"])
def test_an_invalidation_during_the_outage_still_holds_after_redis_returns(relayed_env, redis_relay, invalidation,
                                                                            first):
    """The revoke's and deactivation's cache writes cannot reach Redis during the outage; the cached 'valid'
    entries must not come back to life when it returns — whichever endpoint asks first."""
    env = relayed_env
    token = env.buy()
    for _ in range(2):
        assert env.get("certificates/filter", token=token).status_code == 200  # cached in Redis
    assert env.status(token).status_code == 200
    redis_relay.stop()
    assert env.get("certificates/filter", token=token).status_code == 200  # notice the outage
    if invalidation == "revoke":
        assert env.revoke(token).status_code == 200
    else:
        result = env.app.test_cli_runner().invoke(args=["users", "deactivate", token["user"]["email"]])
        assert result.exit_code == 0, result.output
    assert_error(env.get("certificates/filter", token=token), 401)
    assert_error(env.status(token), 401)
    redis_relay.start()
    wait_for_redis_retry()
    env.upstream.clear()
    asks = [lambda: env.status(token), lambda: env.get("certificates/filter", token=token)]
    for ask in asks if first == "status" else asks[::-1]:
        assert_error(ask(), 401)
    for _ in range(3):  # and stays so on the fast path
        assert_error(env.get("certificates/filter", token=token), 401)
    assert env.upstream.log == []
