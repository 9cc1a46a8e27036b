"""Hostile JSON bodies (deep nesting, huge bodies) on every route that takes one: a 400/413/422 in the error
shape, never a 500 and never a traceback in the log, and nothing changes."""
from __future__ import annotations

import io
import json
import logging
import re
import uuid

import pytest

from tests.payments.helpers import Provider, create_payment
from zenzefi_backend import errors as errors_module
from zenzefi_backend.openapi.jsonbody import MAX_DEPTH, MalformedJson, loads

DEPTH = 900
HOSTILE_BODIES = {
    "array-unclosed-900": "[" * DEPTH,
    "array-closed-900": "[" * DEPTH + "]" * DEPTH,
    "array-unclosed-100000": "[" * 100_000,
    "array-closed-100000": "[" * 100_000 + "]" * 100_000,
    "object-900": '{"a":' * DEPTH + "1" + "}" * DEPTH,
    "object-100000": '{"a":' * 100_000 + "1" + "}" * 100_000,
    "object-in-field": '{"email": ' + "[" * 5000 + "]" * 5000 + ', "password": "x"}',
    "just-too-deep": "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1),
}


@pytest.fixture
def logged_errors(caplog):
    """Error records of the app's error handler (alembic's logging config disables existing loggers)."""
    previous = errors_module.log.disabled
    errors_module.log.disabled = False
    caplog.set_level(logging.ERROR)
    yield caplog
    errors_module.log.disabled = previous


def json_routes(client) -> list[tuple[str, str]]:
    """Every documented operation with a JSON request body, path parameters filled with a fresh UUID."""
    spec = client.get("/openapi.json").get_json()
    routes = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method == "parameters" or "application/json" not in operation.get("requestBody", {}).get("content", {}):
                continue
            routes.append((method.upper(), re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path)))
    return routes


def test_every_json_route_is_covered(client):
    routes = {path for _, path in json_routes(client)}
    for expected in ("/api/v1/auth/login", "/api/v1/auth/register", "/api/v1/tokens/purchase",
                     "/api/v1/currency/purchase", "/api/v1/webhooks/payment"):
        assert expected in routes
    assert len(routes) >= 15, routes


@pytest.mark.parametrize("name", HOSTILE_BODIES)
def test_deep_json_on_every_route_is_a_client_error_without_a_traceback(client, accounts, logged_errors, name):
    admin = accounts.signed_in(superuser=True)
    for method, path in json_routes(client):
        response = client.open(path, method=method, data=HOSTILE_BODIES[name], content_type="application/json",
                               headers=admin["headers"])
        assert 400 <= response.status_code < 500, (method, path, response.status_code, response.get_data()[:300])
        assert response.is_json and response.get_json()["code"] == response.status_code, (method, path)
    assert [record.getMessage() for record in logged_errors.records] == []


@pytest.mark.parametrize("path", ["/api/v1/auth/login", "/api/v1/auth/register"])
@pytest.mark.parametrize("name", HOSTILE_BODIES)
def test_deep_json_without_signing_in_is_a_400_that_says_why(client, logged_errors, path, name):
    response = client.post(path, data=HOSTILE_BODIES[name], content_type="application/json")
    assert response.status_code == 400, response.get_data()[:300]
    body = response.get_json()
    assert body["code"] == 400 and body["status"] == "Bad Request"
    assert "JSON" in body["message"] and "json" in body["errors"], body
    assert logged_errors.records == []


@pytest.mark.parametrize("name", HOSTILE_BODIES)
def test_deep_json_on_a_purchase_is_a_400_and_buys_nothing(client, accounts, name):
    user = accounts.signed_in()
    accounts.fund(user["id"], "100")
    response = client.post("/api/v1/tokens/purchase", data=HOSTILE_BODIES[name], content_type="application/json",
                           headers=user["headers"])
    assert response.status_code == 400, response.get_data()[:300]
    listed = client.get("/api/v1/tokens/my-tokens?active_only=false", headers=user["headers"]).get_json()
    assert listed["total"] == 0
    assert client.get("/api/v1/currency/balance", headers=user["headers"]).get_json()["balance"] == "100.00"


def test_nesting_up_to_the_limit_is_still_parsed(client):
    body = '{"email": "a@example.com", "password": "x", "extra": ' + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "}"
    response = client.post("/api/v1/auth/login", data=body, content_type="application/json")
    assert response.status_code == 422 and "extra" in response.get_json()["errors"], response.get_json()


@pytest.mark.parametrize("path", ["/api/v1/auth/login", "/api/v1/auth/register"])
def test_a_body_over_the_json_limit_is_a_413(app, client, path):
    limit = app.config["MAX_JSON_BODY_BYTES"]
    body = '{"email": "a@example.com", "password": "' + "x" * limit + '"}'
    response = client.post(path, data=body, content_type="application/json")
    assert response.status_code == 413, response.get_data()[:300]
    assert response.get_json()["code"] == 413


def test_a_streamed_body_over_the_json_limit_is_a_413(app, client):
    """No declared length (a chunked request): the limit still applies while reading."""
    limit = app.config["MAX_JSON_BODY_BYTES"]
    body = b'{"email": "a@example.com", "password": "' + b"x" * limit + b'"}'
    response = client.post("/api/v1/auth/login", input_stream=io.BytesIO(body), content_type="application/json",
                           environ_overrides={"CONTENT_LENGTH": "", "wsgi.input_terminated": True})
    assert response.status_code == 413, response.get_data()[:300]


def test_a_signed_deep_payment_webhook_is_a_400(app, client, accounts, logged_errors):
    user = accounts.signed_in()
    payment = create_payment(client, user).get_json()
    provider = Provider(app, client)
    for name in ("array-closed-900", "object-900", "just-too-deep"):
        response = provider.deliver(HOSTILE_BODIES[name].encode())
        assert response.status_code == 400, (name, response.get_json())
        assert "not valid JSON" in response.get_json()["message"]
    nested = "[" * 2000 + "]" * 2000
    deep_data = json.dumps({"id": "evt_1", "type": "payment.succeeded",
                            "data": {"payment_id": payment["payment_id"], "amount_znc": "100.00", "x": "X"}})
    deep_data = deep_data.replace('"X"', nested).encode()
    assert provider.deliver(deep_data).status_code == 400
    assert logged_errors.records == []


@pytest.mark.parametrize("raw", ["[" * 100_000, "[" * 5000 + "]" * 5000, '{"a":' * 5000 + "1" + "}" * 5000,
                                 "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), b"\xff"])
def test_loads_refuses_what_would_recurse_too_deep(raw):
    with pytest.raises(MalformedJson):
        loads(raw)


def test_loads_keeps_the_text_of_fractional_numbers():
    value = loads('{"a": 1e2, "b": 5.00, "c": 7}')
    assert value == {"a": 100.0, "b": 5.0, "c": 7}
    assert (value["a"].text, value["b"].text) == ("1e2", "5.00")
    assert type(value["c"]) is int
