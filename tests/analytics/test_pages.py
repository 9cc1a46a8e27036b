"""The dashboard pages as served: security headers (flask-talisman) on every HTML page and nowhere else, no inline
script, nothing from a CDN, the vendored Chart.js as recorded; and the analytics endpoints in the OpenAPI document."""
from __future__ import annotations

import hashlib
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

import zenzefi_backend

PAGES = ("/dashboard", "/admin/dashboard")
STATIC = Path(zenzefi_backend.__file__).parent / "analytics" / "static"
CHARTJS_SHA256 = "3f288f4f26882c26b58931fb586a9b4f30370b5de38d69dc005b0bd05b08e113"


class Elements(HTMLParser):
    """Every start tag of a page with its attributes, and the text inside <script> and <style> elements."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline_code: list[str] = []
        self._inside: str | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._inside = tag if tag in ("script", "style") else None

    def handle_endtag(self, tag):
        self._inside = None

    def handle_data(self, data):
        if self._inside and data.strip():
            self.inline_code.append(data)


def parsed(html: str) -> Elements:
    elements = Elements()
    elements.feed(html)
    return elements


def policy(response) -> dict[str, str]:
    return {part.split(" ", 1)[0]: part.split(" ", 1)[1] if " " in part else ""
            for part in (piece.strip() for piece in response.headers["Content-Security-Policy"].split(";")) if part}


@pytest.mark.parametrize("path", PAGES)
def test_pages_carry_the_security_headers_and_a_policy_without_inline_script(client, path):
    response = client.get(path)
    assert response.status_code == 200 and response.mimetype == "text/html"
    csp = policy(response)
    assert csp["script-src"] == "'self'" and csp["default-src"] == "'self'" and csp["style-src"] == "'self'"
    assert csp["frame-ancestors"] == "'none'" and csp["object-src"] == "'none'" and csp["base-uri"] == "'none'"
    assert "unsafe" not in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("path", PAGES)
def test_pages_have_no_inline_script_or_style_and_load_only_our_own_files(client, path):
    elements = parsed(client.get(path).get_data(as_text=True))
    assert elements.inline_code == []
    scripts = [attrs for tag, attrs in elements.tags if tag == "script"]
    assert len(scripts) == 3 and all(attrs.get("src", "").startswith("/dashboard/static/") for attrs in scripts)
    for tag, attrs in elements.tags:
        assert not [name for name in attrs if name.startswith("on") or name == "style"], (tag, attrs)
        for name in ("src", "href", "action"):
            value = attrs.get(name) or ""
            assert not re.match(r"^(?:[a-z]+:)?//", value), (tag, attrs)  # nothing from another origin
            assert "token" not in value.lower(), (tag, attrs)
    forms = [attrs for tag, attrs in elements.tags if tag == "form"]
    assert forms == [{"id": "sign-in", "method": "post", "action": ""}]  # never a password in a URL
    for attrs in scripts + [attrs for tag, attrs in elements.tags if tag == "link"]:
        asset = client.get(attrs.get("src") or attrs["href"])
        assert asset.status_code == 200, attrs
        assert asset.mimetype in ("text/javascript", "application/javascript", "text/css"), asset.mimetype


def test_the_vendored_chartjs_is_the_recorded_release_with_its_licence(client):
    served = client.get("/dashboard/static/vendor/chartjs/chart.umd.min.js").get_data()
    assert hashlib.sha256(served).hexdigest() == CHARTJS_SHA256
    assert served.startswith(b"/*!\n * Chart.js v4.6.2")
    recorded = (STATIC / "vendor" / "chartjs" / "VENDORED.md").read_text()
    assert CHARTJS_SHA256 in recorded and "4.6.2" in recorded
    assert "MIT License" in (STATIC / "vendor" / "chartjs" / "LICENSE.md").read_text()


def test_our_scripts_use_no_eval_and_write_values_as_text():
    for script in (STATIC / "js").glob("*.js"):
        code = script.read_text()
        for risky in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                      "localStorage", "setTimeout(\"", "location.search"):
            assert risky not in code, (script.name, risky)


def test_the_mock_checkout_page_gets_the_headers_and_keeps_its_stricter_policy(client, accounts):
    user = accounts.signed_in()
    payment = client.post("/api/v1/currency/purchase", headers=user["headers"], json={"amount_znc": "10"})
    assert payment.status_code == 201, payment.get_json()
    page = client.get(f"/api/v1/payments/mock/{payment.get_json()['payment_id']}")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Permissions-Policy"] == "browsing-topics=()"  # Talisman's own mark: our hook ran
    csp = policy(page)
    assert csp["frame-ancestors"] == "'none'"
    runs_scripts_from = csp.get("script-src", csp.get("default-src", ""))
    assert "unsafe-inline" not in runs_scripts_from and "*" not in runs_scripts_from


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_the_api_docs_keep_their_own_headers(client, path):
    response = client.get(path)
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert "script-src 'self'; style-src 'self'" not in response.headers.get("Content-Security-Policy", "")
    assert "Permissions-Policy" not in response.headers


def test_json_answers_are_left_as_they_are(client, accounts):
    user = accounts.signed_in()
    for response in (client.get("/api/v1/analytics/usage", headers=user["headers"]), client.get("/openapi.json"),
                     client.get("/api/v1/analytics/usage")):
        assert response.mimetype == "application/json"
        for header in ("Content-Security-Policy", "X-Frame-Options", "Permissions-Policy", "Referrer-Policy"):
            assert header not in response.headers, (response.request.path, header)


def test_pages_are_served_over_plain_http_without_a_redirect(client):
    response = client.get("/dashboard", base_url="http://dashboard.example")
    assert response.status_code == 200
    assert "Strict-Transport-Security" not in response.headers  # only ever sent over HTTPS


def test_openapi_documents_both_endpoints_their_errors_and_every_field(client):
    spec = client.get("/openapi.json").get_json()
    usage = spec["paths"]["/api/v1/analytics/usage"]["get"]
    global_ = spec["paths"]["/api/v1/analytics/admin/global"]["get"]
    assert {"200", "401", "422", "429"} <= set(usage["responses"]) and "403" not in usage["responses"]
    assert {"200", "401", "403", "422", "429"} <= set(global_["responses"])
    for operation in (usage, global_):
        assert operation["security"] == [{"bearerAuth": []}]
        (period,) = [parameter for parameter in operation["parameters"] if parameter["name"] == "period"]
        assert period["in"] == "query" and period["schema"]["enum"] == ["day", "week", "month"]
    schemas = spec["components"]["schemas"]
    usage_fields = schemas["Usage"]["properties"]
    assert set(usage_fields) >= {"period", "start_time", "end_time", "total_requests", "total_bytes_transferred",
                                 "total_sessions", "active_sessions", "active_tokens", "avg_session_duration_minutes",
                                 "spend_znc", "daily"}
    global_fields = schemas["Global"]["properties"]
    assert set(global_fields) >= {"new_users", "active_users", "dau", "mau", "token_purchases", "bundle_purchases",
                                  "revenue_znc", "refunds_znc", "deposits_znc", "referral_bonuses_znc",
                                  "total_proxy_requests"}
    for name, field in {**usage_fields, **global_fields}.items():
        assert field.get("description"), name
    assert "/dashboard" not in spec["paths"] and "/admin/dashboard" not in spec["paths"]


def test_html_from_the_upstream_is_forwarded_with_its_own_headers(env, upstream):
    from tests.fixtures.proxy import Reply

    upstream.default = Reply(headers=[("Content-Type", "text/html; charset=utf-8")], body=b"<p>upstream page</p>")
    token = env.buy()
    for extra in ({}, {"Origin": "http://localhost:61000"}):  # the fast path, and Flask's route (CORS)
        response = env.get("certificates/filter", token=token, headers=extra)
        assert response.status_code == 200 and response.get_data() == b"<p>upstream page</p>"
        for header in ("Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options", "Referrer-Policy"):
            assert header not in response.headers, (extra, header)
