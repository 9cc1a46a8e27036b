"""`/api/v1/proxy/status` as the desktop client reads it (SPEC §3.6, §7), CORS for the client's local origins,
and the proxy's metrics."""
from __future__ import annotations

import time
from datetime import datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.proxy import DEVICE_A, DEVICE_B, Reply, assert_error, use_database_only
from zenzefi_backend import clock
from zenzefi_backend.clock import ensure_utc, now

STATUS_FIELDS = {"connected", "user_id", "token_id", "scope", "is_activated", "status", "duration_hours", "expires_at",
                 "time_remaining_seconds"}
CLIENT_ORIGINS = ["http://localhost:61000", "https://localhost:61000", "http://127.0.0.1:61000",
                  "https://127.0.0.1:61000"]


@pytest.fixture(params=["redis", "database"])
def via(request, monkeypatch) -> str:
    if request.param == "database":
        use_database_only(monkeypatch)
    return request.param


# --- /proxy/status ------------------------------------------------------------------------------------


def test_status_of_a_ready_token(env, via):
    token = env.buy(duration_hours=24, scope="certificates_only")
    response = env.status(token)
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert response.get_json() == {
        "connected": True, "user_id": token["user"]["id"], "token_id": token["id"], "scope": "certificates_only",
        "is_activated": False, "status": "ready", "duration_hours": 24, "expires_at": None,
        "time_remaining_seconds": 24 * 3600,
    }


def test_status_of_an_active_token(env, token, via):
    assert env.get("certificates/filter", token=token).status_code == 200
    body = env.status(token).get_json()
    assert set(body) == STATUS_FIELDS
    assert body["connected"] is True and body["is_activated"] is True and body["status"] == "active"
    assert body["user_id"] == token["user"]["id"] and body["token_id"] == token["id"]
    assert body["scope"] == "full" and body["duration_hours"] == 1
    assert body["expires_at"].endswith("+00:00")  # UTC, with its offset, as the client parses it
    shown = datetime.fromisoformat(body["expires_at"])
    assert shown.utcoffset() == timedelta(0)
    stored = ensure_utc(env.token_row(token).expires_at)
    assert shown == stored and body["expires_at"] == stored.isoformat()  # microseconds, like every timestamp
    assert 3590 <= body["time_remaining_seconds"] <= 3600
    with clock.travel(timedelta(minutes=45)):
        later = env.status(token).get_json()
    assert 890 <= later["time_remaining_seconds"] <= 900 and later["expires_at"] == body["expires_at"]


@pytest.mark.parametrize("microseconds", [0, 1, 999, 1000, 123456, 999999])
def test_status_shows_expires_at_to_the_microsecond(env, token, via, microseconds):
    """Whatever the sub-second part of the activation moment, from Redis and from the database alike."""
    activated = now().replace(microsecond=microseconds) - timedelta(minutes=1)
    env.update_token(token, activated_at=activated, expires_at=activated + timedelta(hours=1))
    assert env.get("certificates/filter", token=token).status_code == 200  # fills the cache where there is one
    body = env.status(token).get_json()
    assert body["expires_at"] == (activated + timedelta(hours=1)).isoformat()
    assert body["is_activated"] is True


def test_status_needs_no_device_and_without_one_answers_as_before(env, token, via):
    """SPEC §7: the desktop client sends only X-Access-Token; another device holding the token changes nothing."""
    assert env.get("certificates/filter", token=token, device=DEVICE_B).status_code == 200
    body = env.status(token).get_json()
    assert set(body) == STATUS_FIELDS and body["connected"] is True and body["status"] == "active"


# --- /proxy/status for one device (X-Device-ID) ---------------------------------------------------------------

DEVICE_FIELDS = {"device_can_use", "held_by_other_device", "retry_after_seconds", "available_at"}


def device_status(env, token, device: str):
    return env.client.get("/api/v1/proxy/status", headers={"X-Access-Token": token["token"], "X-Device-ID": device})


def test_a_token_nobody_holds_is_usable_by_this_device_and_status_claims_nothing(env, token, via):
    for _ in range(3):
        body = device_status(env, token, DEVICE_A).get_json()
        assert set(body) == STATUS_FIELDS | DEVICE_FIELDS
        assert body["device_can_use"] is True and body["held_by_other_device"] is False
        assert body["retry_after_seconds"] is None and body["available_at"] is None
    assert env.sessions(token) == []
    assert env.get("certificates/filter", token=token, device=DEVICE_B).status_code == 200  # A claimed nothing


def test_the_holding_device_can_use_it(env, token, via):
    assert env.get("certificates/filter", token=token, device=DEVICE_A).status_code == 200
    body = device_status(env, token, DEVICE_A).get_json()
    assert body["device_can_use"] is True and body["held_by_other_device"] is False
    assert body["retry_after_seconds"] is None and body["available_at"] is None


def test_another_device_is_told_the_token_is_held_and_when_it_frees_up(env, token, via):
    """What the 409 of a proxied request would say, without making one and without claiming anything."""
    assert env.get("certificates/filter", token=token, device=DEVICE_A).status_code == 200
    before = now()
    body = device_status(env, token, DEVICE_B).get_json()
    assert body["connected"] is True and body["status"] == "active"
    assert body["device_can_use"] is False and body["held_by_other_device"] is True
    assert 299 <= body["retry_after_seconds"] <= 300
    available = datetime.fromisoformat(body["available_at"])
    assert before + timedelta(seconds=298) <= available <= now() + timedelta(seconds=300)
    refused = env.get("certificates/filter", token=token, device=DEVICE_B)
    assert_error(refused, 409)
    assert abs(int(refused.headers["Retry-After"]) - body["retry_after_seconds"]) <= 1
    assert env.get("certificates/filter", token=token, device=DEVICE_A).status_code == 200  # A still holds it
    (session,) = env.sessions(token)
    assert session.device_id == DEVICE_A and session.is_active


def test_once_the_holder_is_idle_another_device_can_use_it(make_env, via):
    env = make_env(SESSION_IDLE_SECONDS=1)
    token = env.buy()
    assert env.get("certificates/filter", token=token, device=DEVICE_A).status_code == 200
    assert device_status(env, token, DEVICE_B).get_json()["retry_after_seconds"] == 1
    time.sleep(1.2)  # the holder's idle TTL lives in Redis' own clock
    body = device_status(env, token, DEVICE_B).get_json()
    assert body["device_can_use"] is True and body["held_by_other_device"] is False
    assert env.get("certificates/filter", token=token, device=DEVICE_B).status_code == 200


def test_with_redis_up_but_no_holder_cached_the_database_decides_as_a_request_would(env, token):
    """After a Redis restart the holder is only in the database: status and the next request agree."""
    from zenzefi_backend.proxy import cache

    assert env.get("certificates/filter", token=token, device=DEVICE_A).status_code == 200
    env.flush_counters()
    with env.ctx():
        cache.redis_state.client.delete(cache.HOLDER_KEY + token["id"])
    body = device_status(env, token, DEVICE_B).get_json()
    assert body["device_can_use"] is False and body["held_by_other_device"] is True
    assert 1 <= body["retry_after_seconds"] <= 300
    assert_error(env.get("certificates/filter", token=token, device=DEVICE_B), 409)


@pytest.mark.parametrize("device", ["", "short", "has space in it", "x" * 256, "semi;colon-0123"])
def test_a_malformed_device_id_is_400_as_for_the_proxy(env, token, via, device):
    response = device_status(env, token, device)
    proxied = env.get("certificates/filter", token=token, device=device)
    assert assert_error(response, 400) == assert_error(proxied, 400)
    unknown = env.client.get("/api/v1/proxy/status", headers={"X-Access-Token": "n" * 64, "X-Device-ID": device})
    assert_error(unknown, 400)  # the proxy's order: the device header is checked before the token
    assert env.sessions(token) == []


def test_an_invalid_token_is_401_with_a_device_too(env, token, via):
    assert env.revoke(token).status_code == 200
    assert_error(device_status(env, token, DEVICE_A), 401)


def test_the_openapi_document_describes_the_device_fields(env):
    document = env.client.get("/openapi.json").get_json()
    operation = document["paths"]["/api/v1/proxy/status"]["get"]
    [device] = [p for p in operation["parameters"] if p["name"] == "X-Device-ID"]
    assert device["in"] == "header" and device["required"] is False
    assert {"400", "401"} <= set(operation["responses"])
    schema = document["components"]["schemas"]["ProxyStatus"]
    assert set(schema["properties"]) >= DEVICE_FIELDS
    assert not DEVICE_FIELDS & set(schema.get("required", []))


@pytest.mark.parametrize("case", ["missing", "empty", "unknown", "revoked", "expired-in-db", "expired-by-clock",
                                  "inactive-owner"])
def test_status_is_401(env, token, via, case):
    secret = token["token"]
    if case == "missing":
        secret = None
    elif case == "empty":
        secret = ""
    elif case == "unknown":
        secret = "n" * 64
    elif case == "revoked":
        assert env.revoke(token).status_code == 200
    elif case == "expired-in-db":
        past = now() - timedelta(hours=3)
        env.update_token(token, activated_at=past, expires_at=past + timedelta(hours=1))
    elif case == "expired-by-clock":
        assert env.get("certificates/filter", token=token).status_code == 200
        assert env.status(token).status_code == 200
    elif case == "inactive-owner":
        env.accounts.set_flags(token["user"]["id"], is_active=False)
    if case == "expired-by-clock":
        with clock.travel(timedelta(hours=1, seconds=1)):
            assert_error(env.status(secret), 401)
    else:
        assert_error(env.status(secret), 401)


# --- CORS ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("origin", CLIENT_ORIGINS)
def test_preflight_from_a_client_origin_is_allowed_with_credentials(env, origin):
    response = env.client.options("/api/v1/proxy/certificates/import", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "X-Access-Token, X-Device-ID, Content-Type"})
    assert response.status_code in (200, 204)
    assert response.headers["Access-Control-Allow-Origin"] == origin
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    allowed = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"x-access-token", "x-device-id", "content-type"} <= allowed
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert "Origin" in response.headers.get("Vary", "")
    assert env.upstream.log == []  # a preflight is answered here, never forwarded


def test_actual_requests_from_a_client_origin_carry_the_origin_never_a_star(env, token):
    origin = "http://localhost:61000"
    response = env.get("certificates/filter", token=token, headers={"Origin": origin})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == origin
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert "Retry-After" in response.headers.get("Access-Control-Expose-Headers", "")
    rejected = env.get("certificates/filter", token=token, device=DEVICE_B, headers={"Origin": origin})
    assert rejected.status_code == 409 and rejected.headers["Access-Control-Allow-Origin"] == origin
    status = env.client.get("/api/v1/proxy/status", headers={"X-Access-Token": token["token"], "Origin": origin})
    assert status.headers["Access-Control-Allow-Origin"] == origin


@pytest.mark.parametrize("origin", ["http://evil.example", "http://localhost:61001", "http://localhost",
                                    "null", "http://localhost:61000.evil.example"])
def test_unknown_origins_get_no_allow_origin(env, token, origin):
    preflight = env.client.options("/api/v1/proxy/certificates/filter", headers={
        "Origin": origin, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "X-Access-Token, X-Device-ID"})
    assert "Access-Control-Allow-Origin" not in preflight.headers
    assert "Access-Control-Allow-Credentials" not in preflight.headers
    actual = env.get("certificates/filter", token=token, headers={"Origin": origin})
    assert "Access-Control-Allow-Origin" not in actual.headers


def test_cors_origins_are_configurable(make_env):
    env = make_env(CORS_ORIGINS=["http://desktop.test:7000"])
    headers = {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "X-Access-Token"}
    allowed = env.client.options("/api/v1/proxy/x", headers={"Origin": "http://desktop.test:7000", **headers})
    assert allowed.headers["Access-Control-Allow-Origin"] == "http://desktop.test:7000"
    default = env.client.options("/api/v1/proxy/x", headers={"Origin": "http://localhost:61000", **headers})
    assert "Access-Control-Allow-Origin" not in default.headers


def test_never_a_star_with_credentials(env, token, upstream):
    upstream.reply("/cors", Reply(headers=[("Content-Type", "text/plain")]))
    for origin in ["http://localhost:61000", "http://evil.example", None]:
        headers = {"Origin": origin} if origin else {}
        for response in (env.get("cors", token=token, headers=headers), env.status(token),
                         env.client.options("/api/v1/proxy/cors", headers={**headers,
                                                                           "Access-Control-Request-Method": "GET"})):
            assert response.headers.get("Access-Control-Allow-Origin") != "*"


# --- metrics -----------------------------------------------------------------------------------------


def _samples(env) -> dict[tuple[str, frozenset], float]:
    response = env.client.get("/metrics")
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def _delta(before, after, name: str, **labels) -> float:
    key = (name, frozenset(labels.items()))
    assert key in after, f"{name}{labels} not in /metrics"
    return after[key] - before.get(key, 0.0)


def test_proxy_metrics_count_requests_validations_and_bytes(env, token, upstream):
    upstream.reply("/data", Reply(body=b"d" * 1234))
    before = _samples(env)
    for _ in range(3):
        assert env.get("data", token=token).status_code == 200
    assert env.call("POST", "data", token=token, data=b"u" * 100).status_code == 200
    assert_error(env.get("data", token=token, device=DEVICE_B), 409)
    assert_error(env.get("data", token="bad" * 20), 401)
    after = _samples(env)
    assert _delta(before, after, "proxy_requests_total", method="GET", status="200") == 3
    assert _delta(before, after, "proxy_requests_total", method="POST", status="200") == 1
    assert _delta(before, after, "proxy_requests_total", method="GET", status="409") == 1
    assert _delta(before, after, "proxy_requests_total", method="GET", status="401") == 1
    assert _delta(before, after, "token_validations_total", result="cache_miss") >= 1
    assert _delta(before, after, "token_validations_total", result="cache_hit") >= 3
    assert _delta(before, after, "token_validations_total", result="invalid") == 1
    assert _delta(before, after, "proxy_bytes_total", direction="out") == 4 * 1234
    assert _delta(before, after, "proxy_bytes_total", direction="in") == 100
    assert _delta(before, after, "proxy_latency_seconds_count") == 4


def test_metrics_show_the_upstream_status_as_it_was_passed_through(env, token, upstream):
    upstream.reply("/gone", Reply(status=404, body=b"no"))
    before = _samples(env)
    assert env.get("gone", token=token).status_code == 404
    after = _samples(env)
    assert _delta(before, after, "proxy_requests_total", method="GET", status="404") == 1

