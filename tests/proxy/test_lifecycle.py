"""Lazy activation, the device holder and proxy sessions, and invalidation (revoke, deactivate) taking
effect on the very next request."""
from __future__ import annotations

import secrets
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pytest

from tests.fixtures.proxy import (
    CLIENT_ADDRESS,
    DEVICE_A,
    DEVICE_B,
    Reply,
    assert_error,
    assert_locked_out,
    closed_port,
    pattern,
    use_database_only,
)
from tests.fixtures.race import race
from tests.support import postgres_only
from zenzefi_backend import clock
from zenzefi_backend.clock import ensure_utc

# --- lazy activation ------------------------------------------------------------------------------


def test_ready_until_the_first_forwarded_request_then_expires_after_the_duration(env, token):
    assert token["status"] == "ready" and token["activated_at"] is None and token["expires_at"] is None
    assert env.status(token).get_json()["status"] == "ready"
    before = clock.now()
    assert env.get("certificates/filter", token=token).status_code == 200
    after = clock.now()
    row = env.token_row(token)
    activated, expires = ensure_utc(row.activated_at), ensure_utc(row.expires_at)
    assert before <= activated <= after
    assert expires - activated == timedelta(hours=1)
    shown = env.client.get(f"/api/v1/tokens/{token['id']}", headers=token["user"]["headers"]).get_json()
    assert shown["status"] == "active"
    assert datetime.fromisoformat(shown["expires_at"]) == expires
    # Later requests do not move the clock.
    with clock.travel(timedelta(minutes=10)):
        assert env.get("certificates/filter", token=token).status_code == 200
    again = env.token_row(token)
    assert ensure_utc(again.activated_at) == activated and ensure_utc(again.expires_at) == expires


def test_token_activated_event_is_written_once(env, token):
    for _ in range(3):
        assert env.get("certificates/filter", token=token).status_code == 200
    events = env.events("token.activated", token)
    assert len(events) == 1
    row = env.token_row(token)
    assert datetime.fromisoformat(events[0]["activated_at"]) == ensure_utc(row.activated_at)
    assert datetime.fromisoformat(events[0]["expires_at"]) == ensure_utc(row.expires_at)


def test_any_upstream_status_starts_the_clock(env, token, upstream):
    upstream.reply("/missing", Reply(status=404, body=b"not here"))
    assert env.get("missing", token=token).status_code == 404
    assert env.token_row(token).activated_at is not None


def test_status_never_activates_and_never_claims_the_device(env, token):
    for _ in range(5):
        assert env.status(token).get_json()["status"] == "ready"
    assert env.token_row(token).activated_at is None
    assert env.sessions(token) == []
    assert env.get("certificates/filter", token=token, device=DEVICE_B).status_code == 200  # free for anyone


@pytest.mark.parametrize("rejection", ["missing-device", "malformed-device", "inactive-owner", "bad-path", "scope",
                                       "too-large", "upstream-down", "other-device", "rate-limited"])
def test_a_rejected_request_never_activates(make_env, rejection):
    dead = f"http://127.0.0.1:{closed_port()}"
    env = make_env(RATELIMIT_PROXY_FREE=2, MAX_CONTENT_LENGTH=1000,
                   **({"ZENZEFI_UPSTREAM_URL": dead} if rejection in ("upstream-down", "other-device",
                                                                      "rate-limited") else {}))
    token = env.buy(scope="certificates_only")
    if rejection == "missing-device":
        assert_error(env.get("certificates/filter", token=token, device=None), 403)
    elif rejection == "malformed-device":
        assert_error(env.get("certificates/filter", token=token, device="x"), 400)
    elif rejection == "inactive-owner":
        env.accounts.set_flags(token["user"]["id"], is_active=False)
        assert_error(env.get("certificates/filter", token=token), 401)
    elif rejection == "bad-path":
        assert_error(env.get("certificates/filter/%2e%2e", token=token), 400)
    elif rejection == "scope":
        assert_error(env.get("admin", token=token), 403)
    elif rejection == "too-large":
        assert_error(env.call("POST", "certificates/import", token=token, data=b"x" * 1001), 413)
    elif rejection == "upstream-down":
        assert_error(env.get("certificates/filter", token=token), 502)
    elif rejection == "other-device":
        assert_error(env.get("certificates/filter", token=token), 502)  # device A holds it, unactivated
        assert_error(env.get("certificates/filter", token=token, device=DEVICE_B), 409)
    elif rejection == "rate-limited":
        for _ in range(2):
            assert_error(env.get("certificates/filter", token=token), 502)
        assert_error(env.get("certificates/filter", token=token), 429)
    assert env.token_row(token).activated_at is None
    assert env.events("token.activated", token) == []
    if rejection != "inactive-owner":
        assert env.status(token).get_json()["is_activated"] is False


def test_twenty_concurrent_first_requests_from_one_device(env, token, upstream):
    responses = race(env.app, [lambda client: env.get("certificates/filter", token=token, client=client)] * 20)
    assert [r.status_code for r in responses] == [200] * 20, [r.get_data()[:200] for r in responses]
    assert len(upstream.log) == 20
    assert len(env.events("token.activated", token)) == 1
    sessions = env.sessions(token)
    assert len(sessions) == 1 and sessions[0].device_id == DEVICE_A and sessions[0].is_active
    assert len(env.events("session.started", token)) == 1
    env.flush_counters()
    assert env.sessions(token)[0].request_count == 20


@postgres_only
@pytest.mark.postgres
def test_twenty_concurrent_first_requests_from_two_devices_one_wins(env, token, upstream):
    devices = [DEVICE_A, DEVICE_B] * 10
    responses = race(env.app, [
        (lambda client, device=device: env.get("certificates/filter", token=token, device=device, client=client))
        for device in devices])
    by_device: dict[str, set[int]] = {DEVICE_A: set(), DEVICE_B: set()}
    for device, response in zip(devices, responses, strict=True):
        by_device[device].add(response.status_code)
    assert sorted(map(frozenset, by_device.values()), key=min) == [frozenset({200}), frozenset({409})], by_device
    winner = DEVICE_A if by_device[DEVICE_A] == {200} else DEVICE_B
    assert len(upstream.log) == 10
    active = [s for s in env.sessions(token) if s.is_active]
    assert len(active) == 1 and active[0].device_id == winner
    assert len(env.events("token.activated", token)) == 1


# --- a gift while a request admitted with the old secret is in flight ----------------------------------


class HeldUpstream:
    """Answers `path` only once `release` is set; `arrived` counts the requests waiting there."""

    def __init__(self, upstream, path: str):
        self.release = threading.Event()
        self.arrived = threading.Semaphore(0)

        def answer(_recorded) -> Reply:
            self.arrived.release()
            assert self.release.wait(timeout=30), "the test never released the upstream"
            return Reply(body=b"late answer")

        upstream.reply(path, answer)

    def wait_for(self, count: int) -> None:
        for _ in range(count):
            assert self.arrived.acquire(timeout=30), "a proxied request never reached the upstream"


def secret_for_the_gift(monkeypatch) -> str:
    """The secret the gift will e-mail, known to the test in advance."""
    from zenzefi_backend.tokens import gifts

    secret = secrets.token_urlsafe(48)
    monkeypatch.setattr(gifts, "new_secret", lambda: secret)
    return secret


@pytest.mark.parametrize("backend", ["redis", "database"])
def test_a_request_admitted_with_the_old_secret_never_starts_a_gifted_tokens_clock(env, token, upstream, monkeypatch,
                                                                                   backend):
    """Slow upstream: the giver's first request is in flight when the gift answers 200. The upstream's late answer
    reaches the giver, but the clock stays stopped for the recipient, whose own first request starts it."""
    if backend == "database":
        use_database_only(monkeypatch)
    held = HeldUpstream(upstream, "/certificates/slow")
    new_secret = secret_for_the_gift(monkeypatch)
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(env.get, "certificates/slow", token=token, client=env.app.test_client())
        held.wait_for(1)
        gifted = env.gift(token)
        assert gifted.status_code == 200, gifted.get_json()
        held.release.set()
        late = in_flight.result(timeout=30)
    assert late.status_code == 200 and late.get_data() == b"late answer"

    row = env.token_row(token)
    assert row.gifted_at is not None and row.activated_at is None and row.expires_at is None
    assert env.events("token.activated", token) == []
    assert env.status(new_secret).get_json()["status"] == "ready"
    assert_error(env.get("certificates/filter", token=token), 401)  # the old secret is refused

    assert env.get("certificates/filter", token=new_secret, device=DEVICE_B).status_code == 200
    row = env.token_row(token)
    assert ensure_utc(row.activated_at) > ensure_utc(row.gifted_at)
    assert len(env.events("token.activated", token)) == 1


@postgres_only
@pytest.mark.postgres
def test_gifts_racing_first_answers_either_the_gift_or_the_old_secrets_activation_wins(env, upstream):
    """Ten tokens, each with a first request in flight; the upstream answers them all while their gifts run. Per
    token exactly one side wins: a gifted token was never activated by the old secret, an activated one was not
    gifted (409)."""
    user = env.funded_user("1000.00")
    tokens = [env.buy(user) for _ in range(10)]
    held = HeldUpstream(upstream, "/certificates/slow")
    with ThreadPoolExecutor(len(tokens)) as pool:
        in_flight = [pool.submit(env.get, "certificates/slow", token=token, device=f"device-{index:02d}-0123456789",
                                 client=env.app.test_client()) for index, token in enumerate(tokens)]
        held.wait_for(len(tokens))
        calls = [lambda client: held.release.set()] + [
            (lambda client, token=token: client.post(f"/api/v1/tokens/{token['id']}/gift", headers=user["headers"],
                                                     json={"recipient_email": "friend@example.com"}).status_code)
            for token in tokens]
        outcomes = race(env.app, calls)[1:]
        assert [future.result(timeout=30).status_code for future in in_flight] == [200] * len(tokens)
    for token, gift_status in zip(tokens, outcomes, strict=True):
        row = env.token_row(token)
        if gift_status == 200:
            assert row.gifted_at is not None and row.activated_at is None, (token["id"], row.activated_at)
            assert env.events("token.activated", token) == []
        else:
            assert gift_status == 409 and row.gifted_at is None and row.activated_at is not None


# --- sessions -------------------------------------------------------------------------------------


def test_a_session_opens_on_the_first_request(env, token):
    before = clock.now()
    response = env.get("certificates/filter", token=token, headers={"User-Agent": "ZenzefiDesktop/2.1"})
    assert response.status_code == 200
    (session,) = env.sessions(token)
    assert session.is_active and session.ended_at is None
    assert str(session.token_id) == token["id"] and str(session.user_id) == token["user"]["id"]
    assert session.device_id == DEVICE_A and session.ip_address == CLIENT_ADDRESS
    assert session.user_agent == "ZenzefiDesktop/2.1"
    assert before <= ensure_utc(session.started_at) <= clock.now()
    (started,) = env.events("session.started", token)
    assert started["session_id"] == str(session.id) and started["device_id"] == DEVICE_A


def _traffic(env, token, upstream) -> tuple[int, int, int]:
    """Five requests with known request and response sizes: (requests, bytes in, bytes out)."""
    upstream.reply("/small", Reply(body=b"a" * 10))
    upstream.reply("/big", Reply(body=pattern(100_000)))
    bodies = [b"", b"x" * 1000, b"", pattern(5000), b""]
    paths = ["small", "big", "small", "big", "small"]
    bytes_out = 0
    for path, body in zip(paths, bodies, strict=True):
        response = env.call("POST" if body else "GET", path, token=token, data=body or None)
        assert response.status_code == 200
        bytes_out += len(response.get_data())
    return len(paths), sum(map(len, bodies)), bytes_out


def test_counters_reach_the_session_row_after_flush(env, token, upstream):
    requests, bytes_in, bytes_out = _traffic(env, token, upstream)
    env.send_pending_bytes_out()  # the last response's bytes: what the next request or the timer sends
    assert env.flush_counters() == 1
    (session,) = env.sessions(token)
    assert (session.request_count, session.bytes_in, session.bytes_out) == (requests, bytes_in, bytes_out)
    assert env.flush_counters() == 0  # nothing is added twice
    (session,) = env.sessions(token)
    assert (session.request_count, session.bytes_in, session.bytes_out) == (requests, bytes_in, bytes_out)


def test_counters_go_straight_to_the_row_without_redis(env, token, upstream, monkeypatch):
    use_database_only(monkeypatch)
    requests, bytes_in, bytes_out = _traffic(env, token, upstream)
    (session,) = env.sessions(token)
    assert (session.request_count, session.bytes_in, session.bytes_out) == (requests, bytes_in, bytes_out)


def test_the_sweep_job_flushes_and_closes(env, token):
    from zenzefi_backend.jobs.proxy import sweep_proxy_sessions

    assert env.get("certificates/filter", token=token).status_code == 200
    with env.ctx():
        assert sweep_proxy_sessions() == {"flushed": 1, "closed": 0, "reasserted": 0}
    assert env.sessions(token)[0].request_count == 1


def test_idle_holder_releases_the_token_to_another_device(make_env):
    env = make_env(SESSION_IDLE_SECONDS=1)
    token = env.buy()
    assert env.get("certificates/filter", token=token, device=DEVICE_A).status_code == 200
    assert env.get("certificates/filter", token=token, device=DEVICE_A).status_code == 200
    response = env.get("certificates/filter", token=token, device=DEVICE_B)
    assert_error(response, 409)
    assert response.headers["Retry-After"] == "1"
    time.sleep(1.2)  # the one real wait: the holder's idle TTL lives in Redis' own clock
    assert env.get("certificates/filter", token=token, device=DEVICE_B).status_code == 200
    old, new = env.sessions(token)
    assert old.device_id == DEVICE_A and not old.is_active and old.ended_at is not None
    assert new.device_id == DEVICE_B and new.is_active
    ended = env.events("session.ended", token)
    assert [(e["session_id"], e["reason"]) for e in ended] == [(str(old.id), "idle")]
    assert_error(env.get("certificates/filter", token=token, device=DEVICE_A), 409)  # now B holds it


def test_close_idle_sessions_closes_an_idle_session_once(make_env):
    env = make_env(SESSION_IDLE_SECONDS=1)
    token = env.buy()
    assert env.get("certificates/filter", token=token).status_code == 200
    assert env.close_idle_sessions() == 0  # still in use
    time.sleep(1.2)
    assert env.close_idle_sessions() == 1
    assert env.close_idle_sessions() == 0
    (session,) = env.sessions(token)
    assert not session.is_active and session.ended_at is not None
    assert [e["reason"] for e in env.events("session.ended", token)] == ["idle"]


def test_close_idle_sessions_closes_sessions_of_expired_tokens_once(env, token):
    assert env.get("certificates/filter", token=token).status_code == 200
    with clock.travel(timedelta(hours=1, seconds=5)):
        assert env.close_idle_sessions() == 1
        assert env.close_idle_sessions() == 0
    assert not env.sessions(token)[0].is_active
    assert [e["reason"] for e in env.events("session.ended", token)] == ["expired"]


def test_close_idle_sessions_closes_sessions_of_revoked_tokens_once(env, token):
    assert env.get("certificates/filter", token=token).status_code == 200
    env.update_token(token, revoked_at=clock.now())  # revoked behind the proxy's back (no session ended)
    assert env.close_idle_sessions() == 1
    assert env.close_idle_sessions() == 0
    assert [e["reason"] for e in env.events("session.ended", token)] == ["revoked"]


def test_close_idle_sessions_leaves_busy_sessions_alone(env, token):
    other = env.buy()
    assert env.get("certificates/filter", token=token).status_code == 200
    assert env.get("certificates/filter", token=other, device=DEVICE_B).status_code == 200
    assert env.close_idle_sessions() == 0
    assert all(s.is_active for s in env.sessions(token) + env.sessions(other))


# --- invalidation on the very next request ---------------------------------------------------------


def _holder_in_redis(env, token) -> bool:
    from zenzefi_backend.proxy import cache

    with env.ctx():
        return cache.redis_state.holder_exists(uuid.UUID(token["id"]))


def test_revoke_is_401_on_the_very_next_request_and_frees_the_device(env, token):
    for _ in range(3):  # warm: token, owner and holder all cached
        assert env.get("certificates/filter", token=token).status_code == 200
    assert env.revoke(token).status_code == 200
    assert_locked_out(env, token, "revoked")
    assert not _holder_in_redis(env, token)
    # The device itself is free to use another token straight away.
    assert env.get("certificates/filter", token=env.buy(token["user"])).status_code == 200


def test_deactivating_the_owner_is_401_on_the_very_next_request(env, token):
    from zenzefi_backend.accounts.models import User
    from zenzefi_backend.accounts.services import deactivate_user
    from zenzefi_backend.extensions import db

    for _ in range(3):
        assert env.get("certificates/filter", token=token).status_code == 200
    assert env.status(token).status_code == 200
    with env.ctx():
        deactivate_user(db.session.get(User, uuid.UUID(token["user"]["id"])))
    env.upstream.clear()
    assert_error(env.get("certificates/filter", token=token), 401)
    assert_error(env.status(token), 401)
    assert env.upstream.log == []
    response = env.client.get("/api/v1/currency/balance", headers=token["user"]["headers"])
    assert_error(response, 401)
    (session,) = env.sessions(token)
    assert not session.is_active
    assert [e["reason"] for e in env.events("session.ended", token)] == ["deactivated"]
    assert not _holder_in_redis(env, token)


def test_deactivating_from_the_cli_is_401_on_the_very_next_request(env, token):
    assert env.get("certificates/filter", token=token).status_code == 200
    assert env.status(token).status_code == 200
    result = env.app.test_cli_runner().invoke(args=["users", "deactivate", token["user"]["email"]])
    assert result.exit_code == 0, result.output
    assert_error(env.get("certificates/filter", token=token), 401)
    assert_error(env.status(token), 401)
    assert_error(env.client.get("/api/v1/currency/balance", headers=token["user"]["headers"]), 401)


def test_every_token_of_a_deactivated_owner_stops(env):
    user = env.funded_user()
    first, second = env.buy(user), env.buy(user)
    assert env.get("certificates/filter", token=first).status_code == 200
    assert env.get("certificates/filter", token=second, device=DEVICE_B).status_code == 200
    result = env.app.test_cli_runner().invoke(args=["users", "deactivate", user["email"]])
    assert result.exit_code == 0, result.output
    assert_error(env.get("certificates/filter", token=first), 401)
    assert_error(env.get("certificates/filter", token=second, device=DEVICE_B), 401)
