from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support import app_config


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def upstream():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def hanging_server():
    """Accepts connections and never answers: a dependency that hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


@pytest.fixture
def make_app(backends, tmp_path):
    from zenzefi_backend import create_app

    def make(**overrides):
        return create_app(app_config(backends, tmp_path, **{"HEALTH_REFRESH_SECONDS": 50, **overrides}))

    return make


def wait_for_status(client, expected: str, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = client.get("/health").get_json()
        if body["status"] == expected or time.monotonic() > deadline:
            return body
        time.sleep(0.02)


def test_live(client):
    assert client.get("/health/live").get_json() == {"status": "alive"}


def test_ready_when_the_database_answers(client):
    response = client.get("/health/ready")
    assert response.status_code == 200
    assert response.get_json()["checks"]["database"] == "up"


def test_not_ready_while_the_database_is_unreachable(make_app):
    app = make_app(DATABASE_URL="postgresql://postgres@127.0.0.1:1/none")
    response = app.test_client().get("/health/ready")
    assert response.status_code == 503
    body = response.get_json()
    assert body["code"] == 503 and "database" in body["message"]
    assert body["checks"]["database"] == "down"


def test_healthy_when_every_dependency_answers(make_app, upstream):
    client = make_app(ZENZEFI_UPSTREAM_URL=upstream).test_client()
    body = wait_for_status(client, "healthy")
    assert body["status"] == "healthy"
    assert body["timestamp"].endswith("+00:00")


def test_the_timestamp_is_never_older_than_the_refresh_period(make_app, upstream):
    """The report is refreshed in the background every period, whether or not anyone asks in between."""
    from datetime import datetime

    from zenzefi_backend.clock import now

    client = make_app(ZENZEFI_UPSTREAM_URL=upstream, HEALTH_REFRESH_SECONDS=1, HEALTH_TTL_SECONDS=120).test_client()
    assert wait_for_status(client, "healthy")["status"] == "healthy"
    slack = 1.0  # one check's duration on a busy machine (bounded by the checks' 3.5 s deadline)
    ages = []
    for pause in (3.5, 0.3, 1.7, 0.05, 0.05, 2.2):
        time.sleep(pause)  # nobody asks meanwhile
        body = client.get("/health").get_json()
        ages.append((now() - datetime.fromisoformat(body["timestamp"])).total_seconds())
    assert max(ages) <= 1 + slack, ages


def test_degraded_when_only_the_upstream_is_down(make_app):
    client = make_app(ZENZEFI_UPSTREAM_URL="http://127.0.0.1:9").test_client()
    assert wait_for_status(client, "degraded")["status"] == "degraded"


def test_unhealthy_when_the_database_is_down(make_app, upstream):
    app = make_app(DATABASE_URL="postgresql://postgres@127.0.0.1:1/none", ZENZEFI_UPSTREAM_URL=upstream)
    client = app.test_client()
    assert wait_for_status(client, "unhealthy")["status"] == "unhealthy"


def test_health_answers_fast_while_a_dependency_hangs(make_app, hanging_server):
    client = make_app(ZENZEFI_UPSTREAM_URL=f"http://{hanging_server}").test_client()
    timings = []
    for _ in range(10):
        started = time.perf_counter()
        response = client.get("/health")
        timings.append(time.perf_counter() - started)
        assert response.status_code == 200
    assert max(timings) < 0.1, timings


def test_detailed_is_for_superusers_only(client, accounts):
    assert client.get("/health/detailed").status_code == 401
    user = accounts.signed_in()
    assert client.get("/health/detailed", headers=user["headers"]).status_code == 403
    admin = accounts.signed_in(superuser=True)
    response = client.get("/health/detailed", headers=admin["headers"])
    assert response.status_code == 200
    body = response.get_json()
    assert body["checks"]["database"]["status"] == "up"
    assert body["checks"]["redis"]["status"] == "up"
    assert body["checks"]["upstream"]["status"] == "down" and body["checks"]["upstream"]["error"]
    assert {queue["name"] for queue in body["queues"]} == {"default", "emails", "webhooks"}
    assert isinstance(body["workers"], int)
