from __future__ import annotations

import pytest
from flask import Blueprint


def test_unknown_route_is_a_json_404(client):
    response = client.get("/no/such/thing")
    assert response.status_code == 404
    assert response.is_json
    assert response.get_json() == {"code": 404, "status": "Not Found", "message": response.get_json()["message"]}


def test_wrong_method_is_a_json_405_with_allow(client):
    response = client.delete("/api/v1/auth/login")
    assert response.status_code == 405
    assert response.get_json()["code"] == 405
    assert "POST" in response.headers["Allow"]


def test_unexpected_exception_is_a_json_500_without_a_traceback(app):
    from zenzefi_backend import create_app

    broken = create_app({**{k: app.config[k] for k in ("ZENZEFI_ENV", "DATABASE_URL", "REDIS_URL")}})
    blueprint = Blueprint("boom", __name__)

    @blueprint.route("/boom")
    def boom():
        raise RuntimeError("secret internals /etc/passwd")

    broken.register_blueprint(blueprint)
    response = broken.test_client().get("/boom")
    assert response.status_code == 500
    assert response.get_json() == {"code": 500, "status": "Internal Server Error", "message": "Internal server error."}
    assert "secret internals" not in response.get_data(as_text=True)
    assert "Traceback" not in response.get_data(as_text=True)


def test_openapi_document_declares_security_schemes_and_routes(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    spec = response.get_json()
    assert spec["openapi"].startswith("3.")
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearerAuth"]["scheme"] == "bearer"
    assert schemes["accessTokenAuth"] == {**schemes["accessTokenAuth"], "type": "apiKey", "in": "header",
                                          "name": "X-Access-Token"}
    me = spec["paths"]["/api/v1/users/me"]
    assert me["get"]["security"] == [{"bearerAuth": []}]
    assert "401" in me["get"]["responses"]
    assert spec["paths"]["/api/v1/auth/login"]["post"]["security"] == []
    assert "/health" in spec["paths"]


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_documentation_pages_are_served(client, path):
    response = client.get(path)
    assert response.status_code == 200
    assert b"openapi.json" in response.data


def test_every_documented_operation_declares_its_security(client):
    spec = client.get("/openapi.json").get_json()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method == "parameters":  # path-level parameters, not an operation
                continue
            assert "security" in operation, f"{method.upper()} {path} does not say how it is authenticated"


@pytest.mark.parametrize(
    "path, body",
    [("/api/v1/auth/login", {"email": "a\x00@example.com", "password": "x"}),
     ("/api/v1/auth/register", {"email": "a@example.com", "username": "nul\x00", "password": "long enough"})],
)
def test_nul_characters_are_a_422_not_a_database_error(client, path, body):
    response = client.post(path, json=body)
    assert response.status_code == 422
    assert response.get_json()["errors"]


def test_nul_characters_in_query_strings_are_422_too(client):
    response = client.post("/api/v1/auth/register?ref=AB%00CD",
                           json={"email": "q@example.com", "username": "querynul", "password": "long enough"})
    assert response.status_code == 422


MONEY_PROPERTIES = {"balance", "amount", "amount_znc", "paid_znc", "price_znc", "refund_amount", "new_balance",
                    "balance_after", "base_price", "total_price", "savings", "price_per_token", "cost_znc",
                    "total_bonus_earned", "cost_per_renewal", "ledger_sum"}


def test_every_money_field_is_documented_as_a_string_with_a_money_example(client):
    """Swagger UI builds its examples from the schema: money must show as "81.00", never as 0."""
    schemas = client.get("/openapi.json").get_json()["components"]["schemas"]
    seen = set()
    for schema_name, schema in schemas.items():
        for name, prop in schema.get("properties", {}).items():
            if name not in MONEY_PROPERTIES:
                continue
            seen.add(name)
            assert prop.get("type") == "string" and "oneOf" not in prop, (schema_name, name, prop)
            assert prop.get("example") == "81.00", (schema_name, name, prop)
            assert prop["pattern"] == r"^-?[0-9]+(\.[0-9]{1,2})?$", (schema_name, name, prop)
    assert seen == MONEY_PROPERTIES
    rates = schemas["Rates"]["properties"]["rates"]["additionalProperties"]
    assert rates["type"] == "string" and rates["example"] == "81.00"


def assert_names(response, *fields_named: str) -> dict:
    assert response.status_code == 422, response.get_data()[:300]
    body = response.get_json()
    for field in fields_named:
        assert field in body["errors"], body
        assert field in body["message"], body
    return body


def test_an_unknown_referral_code_is_a_422_naming_the_field(client):
    response = client.post("/api/v1/auth/register", json={"email": "r@example.com", "username": "referred",
                                                           "password": "long enough", "referral_code": "NOSUCHCODE"})
    assert_names(response, "referral_code")
    query = client.post("/api/v1/auth/register?ref=NOSUCHCODE",
                        json={"email": "q@example.com", "username": "queried", "password": "long enough"})
    assert_names(query, "referral_code")


def test_buying_the_free_plan_is_a_422_naming_the_field(client, accounts):
    user = accounts.signed_in()
    assert_names(client.post("/api/v1/users/me/plan", json={"plan": "free"}, headers=user["headers"]), "plan")


def test_an_expiry_for_a_free_plan_is_a_422_naming_the_field(client, accounts):
    admin, user = accounts.signed_in(superuser=True), accounts.register()
    response = client.patch(f"/api/v1/admin/users/{user['id']}", json={"plan_expires_at": "2030-01-01T00:00:00+00:00"},
                            headers=admin["headers"])
    assert_names(response, "plan_expires_at")


def test_an_idempotency_key_reused_for_another_body_is_a_422_naming_the_header(client, accounts):
    user = accounts.signed_in()
    accounts.fund(user["id"], "100")
    headers = {**user["headers"], "Idempotency-Key": "once"}
    assert client.post("/api/v1/tokens/purchase", json={"duration_hours": 1}, headers=headers).status_code == 201
    reused = client.post("/api/v1/tokens/purchase", json={"duration_hours": 24}, headers=headers)
    assert_names(reused, "Idempotency-Key")


def test_a_domain_validation_error_names_its_fields_by_default():
    from zenzefi_backend.errors import ValidationFailed

    error = ValidationFailed({"b": ["x"], "a": ["y"]})
    assert error.message == "Validation failed: a, b."
