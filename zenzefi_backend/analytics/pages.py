"""The dashboards (`/dashboard`, `/admin/dashboard`) and the security headers of every HTML page we render.

The pages are static shells: they sign in against the API from the browser (the access JWT is kept in
`sessionStorage`, never in a URL or a cookie) and fill themselves from the analytics, token and ledger
endpoints. All script is in static files served by the app (no inline script, no CDN).
"""
from __future__ import annotations

from flask import Blueprint, Flask, Response, current_app, render_template, request
from flask_talisman import DENY, Talisman

PROXY_BLUEPRINT = "proxy"  # the upstream's own answers: forwarded with their headers untouched (SPEC §3.6)

pages = Blueprint("dashboard", __name__, template_folder="templates", static_folder="static",
                  static_url_path="/dashboard/static")

# Everything from our own origin, nothing inline, never framed.
PAGE_POLICY = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self' data:",
    "connect-src": "'self'",
    "font-src": "'self'",
    "object-src": "'none'",
    "base-uri": "'none'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
}


def _page(template: str, page_script: str) -> Response:
    response = Response(render_template(template, api_base="/api/v1", page_script=page_script), mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    return response


@pages.get("/dashboard")
def user_dashboard() -> Response:
    return _page("analytics/dashboard.html", "js/user.js")


@pages.get("/admin/dashboard")
def admin_dashboard() -> Response:
    return _page("analytics/admin_dashboard.html", "js/admin.js")


class PageSecurityHeaders(Talisman):
    """flask-talisman's headers on the HTML pages the app renders (the dashboards, the mock provider's checkout,
    any later page) and nowhere else: JSON answers and whatever the upstream sends through the proxy (HTML too) are
    left as they are, and so are the API docs (`/docs`, `/redoc`), which bring their own policy. A page that sets
    its own Content-Security-Policy (the checkout allows only its inline style and no script at all) keeps it;
    every other header is Talisman's. HTTPS is never forced here: TLS ends at the reverse proxy in front of us
    (ops/nginx)."""

    def init_app(self, app: Flask, **options) -> None:
        settings = {
            "force_https": False,
            "frame_options": DENY,
            "content_security_policy": PAGE_POLICY,
            "referrer_policy": "no-referrer",
            "session_cookie_secure": False,  # no Flask session cookie here (the JWT is in sessionStorage)
            **options,
        }
        super().init_app(app, **settings)

    def _set_response_headers(self, response: Response) -> Response:
        if response.mimetype != "text/html" or request.blueprint == PROXY_BLUEPRINT or _is_api_docs(request.path):
            return response
        own_policy = response.headers.get("Content-Security-Policy")
        super()._set_response_headers(response)
        if own_policy:
            response.headers["Content-Security-Policy"] = own_policy
        return response


def _is_api_docs(path: str) -> bool:
    config = current_app.config
    prefix = "/" + (config.get("OPENAPI_URL_PREFIX") or "").strip("/")
    for name in ("OPENAPI_SWAGGER_UI_PATH", "OPENAPI_REDOC_PATH"):
        if config.get(name):
            docs = (prefix.rstrip("/") + "/" + config[name].strip("/"))
            if path == docs or path.startswith(docs + "/"):
                return True
    return False

