"""The upstream client (issue 4): one shared `requests.Session` per process, whose adapter's per-thread urllib3
pools carry every upstream request; its cookie jar never keeps anything (no cookie of one user is ever sent for
another), it ignores the environment (the upstream is a fixed configured URL) and never follows, nor prepares, a
redirect."""
from __future__ import annotations

import os
import threading

import pytest
import requests

from tests.fixtures.proxy import DEVICE_B, Reply, closed_port, pattern
from zenzefi_backend.proxy import forwarding


@pytest.fixture
def sends(monkeypatch) -> list[tuple[forwarding.ForwardingAdapter, object]]:
    """(adapter, connection pool) of each upstream request of this test."""
    used: list[tuple[forwarding.ForwardingAdapter, object]] = []
    original = forwarding.ForwardingAdapter.upstream

    def upstream(self, base):
        found = original(self, base)
        used.append((self, found.pool))
        return found

    monkeypatch.setattr(forwarding.ForwardingAdapter, "upstream", upstream)
    return used


def test_every_upstream_request_goes_through_one_shared_session(env, upstream, sends):
    first, second = env.buy(), env.buy()
    seen: list[requests.Session] = []

    def in_a_thread() -> None:
        seen.append(forwarding.upstream_session())

    threads = [threading.Thread(target=in_a_thread) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert env.get("certificates/filter", token=first).status_code == 200
    assert env.get("certificates/filter", token=second, device=DEVICE_B).status_code == 200
    sent = list(sends)
    session = forwarding.upstream_session()
    assert isinstance(session, requests.Session)
    adapter = session.get_adapter(upstream.origin)
    assert isinstance(adapter, forwarding.ForwardingAdapter) and adapter.max_retries.total == 0
    # Both requests took this thread's pool of the session's adapter.
    pool = adapter.upstream(upstream.origin).pool
    assert sent == [(adapter, pool), (adapter, pool)]
    assert (pool.host, pool.port, pool.block, pool.pool.maxsize) == ("127.0.0.1", upstream.port, False,
                                                                     forwarding.THREAD_POOL_MAXSIZE)
    assert all(other is session for other in seen)
    # Each thread has pools of its own inside the one session: no thread waits on another's pool lock.
    pools = {id(adapter._thread_pools())}
    other_pools: list[object] = []

    def other_thread() -> None:
        pools.add(id(adapter._thread_pools()))
        other_pools.append(adapter.upstream(upstream.origin).pool)

    other = threading.Thread(target=other_thread)
    other.start()
    other.join()
    assert len(pools) == 2 and other_pools[0] is not pool


def test_the_shared_cookie_jar_stays_empty_and_nothing_bleeds_between_users(env, upstream, sends):
    lang = "lang=en; Path=/; Domain=127.0.0.1"
    upstream.reply("/login", lambda recorded: Reply(headers=[
        ("Set-Cookie", f"JSESSIONID={'a' if 'user=a' in recorded.body.decode() else 'b'}-session; Path=/"),
        ("Set-Cookie", lang),
    ]))
    first, second = env.buy(), env.buy()
    answer_a = env.call("POST", "login", token=first, data=b"user=a")
    answer_b = env.call("POST", "login", token=second, device=DEVICE_B, data=b"user=b")
    assert answer_a.headers.getlist("Set-Cookie") == ["JSESSIONID=a-session; Path=/", lang]
    assert answer_b.headers.getlist("Set-Cookie") == ["JSESSIONID=b-session; Path=/", lang]
    # Each user's own Cookie header reaches the upstream verbatim, and nothing else does.
    assert env.get("certificates/filter", token=first, headers={"Cookie": "JSESSIONID=a-session"}).status_code == 200
    assert env.get("certificates/filter", token=second, device=DEVICE_B).status_code == 200
    assert [r.header("Cookie") for r in upstream.log] == [None, None, "JSESSIONID=a-session", None]
    session = forwarding.upstream_session()
    assert sends and all(used is session.get_adapter(upstream.origin) for used, _ in sends)
    assert len(session.cookies) == 0 and list(session.cookies) == []
    # Even a cookie set on the jar by hand is not kept.
    session.cookies.set("JSESSIONID", "planted", domain="127.0.0.1", path="/")
    assert len(session.cookies) == 0


def test_the_environment_is_ignored(env, token, upstream, monkeypatch):
    """HTTP(S)_PROXY, ALL_PROXY and NO_PROXY pointing elsewhere change nothing: trust_env is off."""
    dead_proxy = f"http://127.0.0.1:{closed_port()}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, dead_proxy)
    monkeypatch.setenv("NO_PROXY", "example.invalid")
    monkeypatch.setenv("no_proxy", "example.invalid")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/nonexistent/ca.pem")
    monkeypatch.setattr(forwarding, "_session", None)  # a session made while the environment says so
    response = env.get("certificates/filter?x=1", token=token)
    assert response.status_code == 200 and response.get_data() == b"upstream ok"
    assert upstream.last().target == "/certificates/filter?x=1"
    assert forwarding.upstream_session().trust_env is False


def test_session_adds_no_headers_of_its_own(env, token, upstream):
    assert env.get("certificates/filter", token=token).status_code == 200
    received = upstream.last()
    assert not received.names() & {"accept", "accept-encoding", "cookie", "authorization"}, received.headers
    assert not received.header("User-Agent").startswith(("python-requests", "python-urllib3"))  # the client's
    assert len(forwarding.upstream_session().headers) == 0


@pytest.mark.parametrize("status", [301, 302, 307])
def test_a_redirects_body_is_passed_back_byte_exact(env, token, upstream, status):
    """requests' Session.send would read a 3xx body to its end to prepare the next hop; ours never does."""
    body = pattern(200_000)
    upstream.reply("/go", Reply(status=status, headers=[("Location", f"{upstream.origin}/next"),
                                                        ("Content-Type", "application/octet-stream")], body=body))
    response = env.get("go", token=token)
    assert response.status_code == status and response.headers["Location"] == "/next"
    assert response.get_data() == body
    assert [r.target for r in upstream.log] == ["/go"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_makes_its_own_session():
    parent = forwarding.upstream_session()
    pid = os.fork()
    if pid == 0:  # the child: exits 0 only when it got a new session
        try:
            fresh = forwarding._session is None and forwarding.upstream_session() is not parent
            os._exit(0 if fresh and forwarding.upstream_adapter() is not parent.adapter else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert forwarding.upstream_session() is parent

