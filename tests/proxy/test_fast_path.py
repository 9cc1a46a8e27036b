"""The WSGI fast path (proxy/entry.py): forwarded requests are served without Flask's machinery, everything
else still goes through Flask, and the answers — rejections included — are the same bytes the Flask route gives.
Also: one Redis round trip per warm request, and how response bytes reach the session counters without one."""
from __future__ import annotations

import contextlib
import io
import json
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.fixtures.proxy import (
    DEVICE_A,
    DEVICE_B,
    ProxyEnv,
    Reply,
    assert_error,
    closed_port,
    flask_activity,
    flask_route_only,
    use_database_only,
)
from zenzefi_backend.proxy import admission, cache, counters
from zenzefi_backend.proxy.runtime import runtime_of

RATE_LIMIT = 3
MAX_BODY = 4096


@contextlib.contextmanager
def redis_round_trips(env: ProxyEnv, monkeypatch) -> Iterator[list[str]]:
    """Every command or pipeline this thread sends to the app's Redis (one round trip each), on a connection of
    the app's pool, pooled or held by the thread."""
    pool = runtime_of(env.app).redis.connection_pool
    sent: list[str] = []
    original = pool.connection_class.send_packed_command
    me = threading.get_ident()

    def send_packed_command(connection, *args, **kwargs):
        if threading.get_ident() == me:
            sent.append("round trip")
        return original(connection, *args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(pool.connection_class, "send_packed_command", send_packed_command)
        yield sent


# --- which requests take it --------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"])
def test_forwarded_requests_never_enter_flask(env, token, method):
    assert env.get("certificates/filter", token=token).status_code == 200  # activation and cache fill
    data = None if method == "GET" else b"body"
    with flask_activity(env) as seen:
        for path in ("certificates/filter", "", "a/b?x=1"):
            response = env.call(method, path, token=token, data=data)
            assert response.status_code == 200, response.get_data()[:200]
    assert seen == {"requests": 0, "app_contexts": 0}  # warm and accepted: no Flask context at all
    with flask_activity(env) as seen:
        assert env.call(method, "/x", token=token, data=data).status_code == 400  # not redirected by Werkzeug
    assert seen == {"requests": 0, "app_contexts": 1}  # only to render the error body


def test_rejections_are_served_by_the_fast_path_too(env, token):
    with flask_activity(env) as seen:
        assert_error(env.get("certificates/filter", token=token, device=None), 403)
        assert_error(env.get("certificates/filter", token=None), 401)
    assert seen["requests"] == 0


def test_status_options_other_methods_and_origin_requests_go_through_flask(env, token, upstream):
    assert env.get("certificates/filter", token=token).status_code == 200
    upstream.clear()
    with flask_activity(env) as seen:
        assert env.status(token).status_code == 200
    assert seen["requests"] == 1
    with flask_activity(env) as seen:
        preflight = env.client.options("/api/v1/proxy/certificates/filter", headers={
            "Origin": "http://localhost:61000", "Access-Control-Request-Method": "GET"})
        assert preflight.status_code in (200, 204)
    assert seen["requests"] == 1
    with flask_activity(env) as seen:
        assert env.call("PROPFIND", "certificates/filter", token=token).status_code == 405
    assert seen["requests"] == 1
    with flask_activity(env) as seen:
        response = env.get("certificates/filter", token=token, headers={"Origin": "http://localhost:61000"})
        assert response.status_code == 200
        assert response.headers["Access-Control-Allow-Origin"] == "http://localhost:61000"
    assert seen["requests"] == 1
    assert [r.target for r in upstream.log] == ["/certificates/filter"]  # only the Origin request was forwarded


def test_a_post_to_status_is_forwarded_by_flask_as_before(env, token, upstream):
    with flask_activity(env) as seen:
        assert env.call("POST", "status", token=token, data=b"{}").status_code == 200
    assert seen["requests"] == 1
    assert upstream.last().target == "/status"


def test_behind_a_trusted_proxy_the_fast_path_gets_the_client_address_from_proxyfix(make_env, upstream):
    env = make_env(TRUSTED_PROXY_HOPS=1)
    token = env.buy()
    with flask_activity(env) as seen:
        response = env.get("certificates/filter", token=token, headers={"X-Forwarded-For": "203.0.113.7"},
                           environ_base={"REMOTE_ADDR": "10.0.0.1"})
        assert response.status_code == 200
    assert seen["requests"] == 0
    assert env.sessions(token)[0].ip_address == "203.0.113.7"
    assert upstream.last().header("X-Forwarded-For") == "203.0.113.7, 10.0.0.1"  # + the peer that connected


# --- the same answers as the Flask route ---------------------------------------------------------------------


def _answer(response) -> tuple[int, dict, object]:
    headers = {name: value for name, value in response.headers.items() if name != "Date"}
    body = response.get_data()
    if response.mimetype == "application/json":
        return response.status_code, headers, json.loads(body)
    return response.status_code, headers, body


def _both_ways(env: ProxyEnv, ask) -> tuple[tuple, tuple]:
    env.upstream.clear()
    with flask_activity(env) as seen:
        fast = _answer(ask())
    assert seen["requests"] == 0
    with flask_route_only(env), flask_activity(env) as seen:
        flask = _answer(ask())
    assert seen["requests"] == 1
    return fast, flask


def _same_answer(fast: tuple, flask: tuple) -> None:
    """Identical, except a Retry-After counted down by Redis' clock between the two requests."""
    (fast_status, fast_headers, fast_body), (flask_status, flask_headers, flask_body) = fast, flask
    if "Retry-After" in fast_headers and fast_headers.get("Retry-After") != flask_headers.get("Retry-After"):
        assert abs(int(fast_headers["Retry-After"]) - int(flask_headers["Retry-After"])) <= 1
        flask_headers = {**flask_headers, "Retry-After": fast_headers["Retry-After"]}
        flask_body = {**flask_body, "retry_after": fast_body["retry_after"]}
        fast_headers = {k: v for k, v in fast_headers.items() if k != "Content-Length"}
        flask_headers = {k: v for k, v in flask_headers.items() if k != "Content-Length"}
    assert (fast_status, fast_headers, fast_body) == (flask_status, flask_headers, flask_body)


@pytest.fixture(params=["redis", "database"])
def strict_env(request, make_env, monkeypatch) -> ProxyEnv:
    """A low rate limit and body limit; on the Redis fast path, or with Redis treated as unreachable."""
    if request.param == "database":
        use_database_only(monkeypatch)
    return make_env(RATELIMIT_PROXY_FREE=RATE_LIMIT, MAX_CONTENT_LENGTH=MAX_BODY)


@pytest.mark.parametrize("row", ["missing-device", "malformed-device", "missing-token", "unknown-token",
                                 "revoked-token", "inactive-owner", "bad-path", "encoded-slash", "double-slash",
                                 "scope", "other-device", "rate-limited", "too-large", "too-large-chunked",
                                 "body-cut-short"])
def test_every_rejection_is_the_flask_routes_answer(strict_env, row, request):
    env = strict_env
    token = env.buy(scope="certificates_only")
    secret: str | None = token["token"]
    device, path, kwargs = DEVICE_A, "certificates/filter", {}
    if row == "missing-device":
        device = None
    elif row == "malformed-device":
        device = "bad device"
    elif row == "missing-token":
        secret = None
    elif row == "unknown-token":
        secret = "q" * 64
    elif row == "revoked-token":
        assert env.revoke(token).status_code == 200
    elif row == "inactive-owner":
        env.accounts.set_flags(token["user"]["id"], is_active=False)
    elif row == "bad-path":
        path = "certificates/filter/../../admin"
    elif row == "encoded-slash":
        path = "certificates%2ffilter"
    elif row == "double-slash":
        path = "/certificates/filter"
    elif row == "scope":
        path = "admin"
    elif row == "other-device":
        assert env.get(path, token=token).status_code == 200
        device = DEVICE_B
    elif row == "rate-limited":
        request.getfixturevalue("fresh_rate_window")
        for _ in range(RATE_LIMIT):
            assert env.get(path, token=token).status_code == 200
    elif row == "too-large":
        kwargs = {"method": "POST", "data": b"x" * (MAX_BODY + 1)}
    elif row == "too-large-chunked":
        kwargs = {"method": "POST", "headers": {"Transfer-Encoding": "chunked"},
                  "environ_overrides": {"wsgi.input_terminated": True}}
    elif row == "body-cut-short":  # the client went away mid-body: Werkzeug's 400, in the shared error shape
        kwargs = {"method": "POST", "environ_overrides": {"CONTENT_LENGTH": "1000"}}
    method = kwargs.pop("method", "GET")

    def ask():
        if row == "too-large-chunked":
            kwargs["input_stream"] = io.BytesIO(b"y" * (MAX_BODY * 3))
        if row == "body-cut-short":
            kwargs["input_stream"] = io.BytesIO(b"z" * 10)
        return env.call(method, path, token=secret, device=device, **kwargs)

    fast, flask = _both_ways(env, ask)
    assert fast[0] in (400, 401, 403, 409, 413, 429), fast
    _same_answer(fast, flask)
    assert env.upstream.log == []  # (a body cut off on its way never completes a request upstream)


@pytest.mark.parametrize("failure", ["unreachable", "timeout"])
def test_upstream_failures_are_the_flask_routes_answer(make_env, upstream, failure):
    if failure == "unreachable":
        env = make_env(ZENZEFI_UPSTREAM_URL=f"http://127.0.0.1:{closed_port()}")
    else:
        env = make_env(PROXY_READ_TIMEOUT=0.3)
        upstream.reply("/slow", Reply(delay=1.0))
    token = env.buy()
    fast, flask = _both_ways(env, lambda: env.get("slow", token=token))
    assert fast[0] == (502 if failure == "unreachable" else 504)
    _same_answer(fast, flask)


def test_forwarded_answers_are_the_flask_routes_answer(env, token, upstream):
    upstream.reply("/page", Reply(status=302, headers=[("Location", f"{upstream.origin}/a?b=1"),
                                                       ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"),
                                                       ("Content-Type", "text/html"), ("Connection", "X-Hop"),
                                                       ("X-Hop", "1"), ("X-Kept", "yes")], body=b"<p>moved</p>"))
    assert env.get("page", token=token).status_code == 302
    fast, flask = _both_ways(env, lambda: env.get("page?x=1", token=token))
    assert fast[1]["Location"] == "/a?b=1" and "X-Hop" not in fast[1]
    _same_answer(fast, flask)
    assert [r.target for r in upstream.log] == ["/page?x=1", "/page?x=1"]


def test_an_unexpected_error_is_a_json_500_as_in_flask(env, token, monkeypatch):
    def broken(*_args, **_kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(admission, "admit", broken)
    fast, flask = _both_ways(env, lambda: env.get("certificates/filter", token=token))
    assert fast[0] == 500 and fast[2]["message"] == "Internal server error."
    _same_answer(fast, flask)


# --- one Redis round trip; response bytes carried by the next one ---------------------------------------------


def _session_counters(env: ProxyEnv, token: dict) -> dict[str, int]:
    (session,) = env.sessions(token)
    raw = runtime_of(env.app).redis.hgetall(counters.SESSION_KEY + str(session.id))
    return {key.decode(): int(value) for key, value in raw.items() if key != b"last_activity"}


def test_a_warm_request_is_one_redis_round_trip_on_the_threads_own_connection(env, token, upstream, monkeypatch):
    upstream.reply("/blob", Reply(body=b"z" * 5000))
    for _ in range(2):
        assert env.get("blob", token=token).status_code == 200
    pool = runtime_of(env.app).redis.connection_pool
    taken: list[str] = []
    original = pool.get_connection
    monkeypatch.setattr(pool, "get_connection", lambda *args, **kwargs: taken.append("taken") or original())
    own = admission.own_connection(runtime_of(env.app).redis)
    with redis_round_trips(env, monkeypatch) as sent:
        for _ in range(5):
            assert env.get("blob", token=token).status_code == 200
            assert env.call("POST", "blob", token=token, data=b"u" * 10).status_code == 200
    assert len(sent) == 10
    assert taken == []  # no checkout, no release: the thread's own connection
    assert admission.own_connection(runtime_of(env.app).redis) is own


def test_after_a_failed_admit_the_next_connection_comes_through_the_pool(env, token, monkeypatch):
    """`pool.get_connection()` is what asks the Sentinels where the primary is now; a connection that reconnected
    by itself would go back to its old address (a dead or demoted primary) for as long as the process lives."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    client = runtime_of(env.app).redis
    pool = client.connection_pool
    assert env.get("certificates/filter", token=token).status_code == 200
    own = admission.own_connection(client)

    def primary_gone(*args, **kwargs):
        raise RedisConnectionError("the primary went away")

    monkeypatch.setattr(own, "send_command", primary_gone)
    with pytest.raises(RedisConnectionError):
        admission._evalsha(client, [cache.TOKEN_KEY + "0" * 64])
    monkeypatch.delattr(own, "send_command")
    assert own in pool._available_connections  # given back, closed
    taken: list[str] = []
    original = pool.get_connection
    monkeypatch.setattr(pool, "get_connection", lambda *args, **kwargs: taken.append("taken") or original())
    admission.own_connection(client)
    assert taken == ["taken"]


@pytest.mark.parametrize("gone", ["reset", "closed_by_the_server"])
def test_a_threads_stale_connection_does_not_take_the_process_off_redis(env, token, monkeypatch, gone):
    """A thread's own connection may have died while it slept (Redis restarted or was away; every other thread of
    the process has long been back on Redis). Its next ADMIT is served on a fresh connection: Redis is not marked
    down, the cache is not dropped, the request is a warm one (no SQL)."""
    from fakeredis import FakeRedis
    from redis.exceptions import ConnectionError as RedisConnectionError

    client = runtime_of(env.app).redis
    assert env.get("certificates/filter", token=token).status_code == 200
    assert env.get("certificates/filter", token=token).status_code == 200
    own = admission.own_connection(client)
    if gone == "reset":  # the peer reset it (what a dead Redis or a relay that died leaves behind): writing fails
        def reset(*args, **kwargs):
            monkeypatch.delattr(own, "send_command")
            raise RedisConnectionError("Error 104 while writing to socket. Connection reset by peer.")

        monkeypatch.setattr(own, "send_command", reset)
    else:  # a restarted Redis closed it: writing still works, the reply never comes
        if isinstance(client, FakeRedis):
            pytest.skip("an in-process Redis has no sockets to close (the 'reset' case covers it)")
        assert client.client_kill_filter(_type="normal", skipme=True) >= 1
    with env.count_sql() as statements:
        assert env.get("certificates/filter", token=token).status_code == 200
    assert cache.redis_state.available() and not cache.redis_state._stale
    assert statements == []  # admitted by Redis, from the cache


def test_the_threads_own_redis_connection_goes_back_when_the_client_changes_and_never_crosses_fork(env, token):
    import os

    from redis import Redis
    from redis.exceptions import ConnectionError as RedisConnectionError

    from tests.support import dead_redis

    client = runtime_of(env.app).redis
    assert env.get("certificates/filter", token=token).status_code == 200
    own = admission.own_connection(client)
    with pytest.raises(RedisConnectionError):
        admission.own_connection(dead_redis())  # no connection to be had: the thread keeps the one it has
    assert admission.own_connection(client) is own
    pool = client.connection_pool
    other = Redis(connection_pool=type(pool)(connection_class=pool.connection_class, **pool.connection_kwargs))
    assert admission.own_connection(other) is not own
    assert own in pool._available_connections  # given back to its pool, not leaked
    mine = admission.own_connection(client)
    assert env.get("certificates/filter", token=token).status_code == 200
    assert admission.own_connection(client) is mine
    pid = os.fork()
    if pid == 0:  # the child: exits 0 only when it got a connection of its own
        try:
            os._exit(0 if admission.own_connection(client) is not mine else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert admission.own_connection(client) is mine
    assert env.get("certificates/filter", token=token).status_code == 200


def test_response_bytes_ride_on_the_next_admission(env, token, upstream):
    upstream.reply("/small", Reply(body=b"s" * 10))
    upstream.reply("/big", Reply(body=b"b" * 7000))
    assert env.get("small", token=token).status_code == 200
    env.send_pending_bytes_out()
    assert _session_counters(env, token) == {"requests": 1, "bytes_in": 0, "bytes_out": 10}
    assert env.get("big", token=token).status_code == 200
    assert _session_counters(env, token) == {"requests": 2, "bytes_in": 0, "bytes_out": 10}  # still in the process
    # The next admission of any token carries them, even one that is refused.
    assert_error(env.get("small", token="r" * 64), 401)
    assert _session_counters(env, token) == {"requests": 2, "bytes_in": 0, "bytes_out": 7010}
    assert env.flush_counters() == 1
    (session,) = env.sessions(token)
    assert (session.request_count, session.bytes_out) == (2, 7010)


def test_without_further_requests_a_timer_sends_the_bytes_within_its_bound(env, token, upstream, monkeypatch):
    monkeypatch.setattr(counters, "BYTES_OUT_FLUSH_SECONDS", 0.2)
    upstream.reply("/last", Reply(body=b"l" * 4321))
    assert env.get("last", token=token).status_code == 200
    deadline = time.monotonic() + 5
    while _session_counters(env, token).get("bytes_out") != 4321 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _session_counters(env, token) == {"requests": 1, "bytes_in": 0, "bytes_out": 4321}
    assert env.flush_counters() == 1
    assert env.sessions(token)[0].bytes_out == 4321


def test_pending_bytes_go_to_the_database_while_redis_is_down(env, token, upstream, monkeypatch):
    upstream.reply("/last", Reply(body=b"d" * 999))
    assert env.get("last", token=token).status_code == 200  # served with Redis: the bytes wait in the process
    use_database_only(monkeypatch)
    env.send_pending_bytes_out()
    assert env.sessions(token)[0].bytes_out == 999


def test_bytes_given_back_when_the_admission_fails_are_not_lost(env, token, upstream, monkeypatch):
    from redis.exceptions import ConnectionError as RedisConnectionError

    upstream.reply("/last", Reply(body=b"g" * 321))
    assert env.get("last", token=token).status_code == 200
    real_admit = admission.run_admit
    carried: list[list] = []

    def failing_admit(*args, **kwargs):
        carried.append(kwargs["bytes_out"])
        raise RedisConnectionError("down for one call")

    monkeypatch.setattr(admission, "run_admit", failing_admit)
    assert env.get("certificates/filter", token=token).status_code == 200  # served from the database
    assert carried == [[(str(env.sessions(token)[0].id), 321)]]
    monkeypatch.setattr(admission, "run_admit", real_admit)
    monkeypatch.setattr(cache.redis_state, "_down_until", 0.0)
    env.send_pending_bytes_out()
    env.flush_counters()
    (session,) = env.sessions(token)
    assert session.bytes_out == 321 + len(b"upstream ok")  # the database-served request counted straight away


def test_the_session_id_in_pending_bytes_is_a_session(env, token):
    assert env.get("certificates/filter", token=token).status_code == 200
    pending = runtime_of(env.app).bytes_out.take()
    assert [uuid.UUID(session_id) for session_id, _ in pending] == [env.sessions(token)[0].id]
