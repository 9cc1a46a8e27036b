"""Every admin route, as the OpenAPI document lists them: 401 without a JWT, 403 for a normal user."""
from __future__ import annotations

import re
import uuid

from .helpers import ADMIN

METHODS = {"get", "post", "put", "patch", "delete"}
WITH_BODY = {"post", "put", "patch"}


def admin_operations(client) -> list[tuple[str, str]]:
    spec = client.get("/openapi.json").get_json()
    operations = []
    for template, item in spec["paths"].items():
        if not template.startswith(ADMIN):
            continue
        path = re.sub(r"\{[^}]+\}", lambda _: str(uuid.uuid4()), template)
        operations += [(method.upper(), path) for method in item if method in METHODS]
    return operations


def call(client, method: str, path: str, headers: dict | None = None):
    body = {"json": {}} if method.lower() in WITH_BODY else {}
    return client.open(path, method=method, headers=headers or {}, **body)


def test_every_admin_route_needs_a_superuser_jwt(client, member, admin):
    operations = admin_operations(client)
    documented = {(method, re.sub(r"[0-9a-f-]{36}", "{id}", path)) for method, path in operations}
    assert {("GET", f"{ADMIN}/users"), ("PATCH", f"{ADMIN}/users/{{id}}"), ("DELETE", f"{ADMIN}/tokens/{{id}}"),
            ("DELETE", f"{ADMIN}/sessions/{{id}}"), ("GET", f"{ADMIN}/audit-logs"),
            ("POST", f"{ADMIN}/users/{{id}}/balance-adjustments"), ("GET", f"{ADMIN}/ledger/verify")} <= documented
    assert len(operations) >= 11, operations
    for method, path in operations:
        anonymous = call(client, method, path)
        assert anonymous.status_code == 401, (method, path, anonymous.get_json())
        assert anonymous.get_json()["code"] == 401
        forbidden = call(client, method, path, member["headers"])
        assert forbidden.status_code == 403, (method, path, forbidden.get_json())
        assert forbidden.get_json()["code"] == 403
        garbage = call(client, method, path, {"Authorization": "Bearer not.a.jwt"})
        assert garbage.status_code == 401, (method, path, garbage.get_json())
        # The same request from a superuser gets past the guard (whatever it then makes of the input).
        assert call(client, method, path, admin["headers"]).status_code not in (401, 403), (method, path)


def test_a_refresh_token_is_not_an_admin_credential(client, admin):
    headers = {"Authorization": f"Bearer {admin['refresh_token']}"}
    assert client.get(f"{ADMIN}/users", headers=headers).status_code == 401
