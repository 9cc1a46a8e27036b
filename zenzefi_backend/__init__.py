"""Zenzefi backend: sells time-limited access tokens for ZNC and proxies the desktop client upstream.

One commit rule. A request (or a job, or a CLI command) is one database transaction, owned by the route-facing
service it calls: that service commits, or rolls back when it refuses (`purchase_token`, `revoke_token`,
`gift_token`, `purchase_plan`, `purchase_bundle`, `deactivate_user`, `admin.services.*`, the sweeps, which commit
per batch or per row). The pieces other services combine into their own transaction say so: in their name
(`purchase_token_in_transaction`, `add_token_in_transaction`, `award_bonus_in_transaction`) or, where a whole
module is made of them, in that module's docstring (`ledger.services`, `audit.services`, `notifications.outbox`,
the proxy's `sessions.end_*`). A piece adds rows and flushes at most; it never commits or rolls back its
caller's transaction, and raises instead (the owner rolls back). Side effects outside the transaction follow
it: metrics count and the outbox relay is nudged in `database.after_commit`; domain events (`events`) are sent
once `commit()` has returned, and their receivers, each on its own, commit their own work
(`database.when_committed`).

Departure from shared/ARCHITECTURE.md: the transactional outbox rows and the audit rows are written in the
changing transaction (`audit.services.record_outcome`), not by after-commit subscribers, so an event the user is
told about and the change it describes commit together; only what lives outside PostgreSQL (the proxy's Redis
cache) or may run in a transaction of its own (ending proxy sessions) follows the after-commit events. And `config`
and `openapi` are packages, not single files: the REDIS_URL parser (`config.redis_url`) and the request-body decoder
(`openapi.jsonbody`) live inside the ground-floor module that needs them, so the ground floor stays the list of
modules shared/tools/import_cycles.py knows.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from flask import Flask
from flask_cors import CORS
from werkzeug.middleware.proxy_fix import ProxyFix

# Set but empty, this variable would make prometheus_client (imported just below) write its files into the
# working directory and /metrics fail; treat it as unset before anything imports prometheus_client.
if os.environ.get("PROMETHEUS_MULTIPROC_DIR") == "":
    del os.environ["PROMETHEUS_MULTIPROC_DIR"]

from . import limit_headers  # noqa: E402
from .config import build_config, load_env_file  # noqa: E402
from .database import release_session_on_teardown  # noqa: E402
from .errors import register_error_handlers  # noqa: E402
from .extensions import api, db, jwt, limiter, metrics_requested, migrate, redis_connection  # noqa: E402
from .extensions import metrics as http_metrics  # noqa: E402 - the package also has a `metrics` module
from .openapi import SECURITY_SCHEMES, jsonbody  # noqa: E402


def _configure_logging(level: str) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root.setLevel(level)


def _sqlite_pragmas(app: Flask) -> None:
    if not app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        return

    @sa.event.listens_for(db.engine, "connect")
    def on_connect(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()


def register_api_rate_limit() -> None:
    """The per-user API limit by plan (plans/limits.py), one application limit over every route; installed
    before `limiter.init_app`, which completes it from the app's config."""
    from flask_limiter import ApplicationLimit

    from .plans.limits import api_rate_key, api_rate_limit, api_rate_message

    limiter.limit_manager.set_application_limits([
        ApplicationLimit(api_rate_limit, key_function=api_rate_key, scope="api", error_message=api_rate_message)
        .bind(limiter)
    ])


def register_gauges() -> None:
    """What each gauge shows, defined where its data lives, is computed when `/metrics` is read."""
    from . import metrics
    from .accounts.gauges import count_users
    from .jobs.gauges import refresh_queue_gauges
    from .proxy.gauges import count_open_sessions
    from .tokens.gauges import count_tokens_in_use

    metrics.compute_gauges_with({metrics.total_users: count_users, metrics.active_tokens: count_tokens_in_use,
                                 metrics.active_sessions: count_open_sessions}, [refresh_queue_gauges])
    metrics_requested.connect(metrics.refresh_gauges)


def register_blueprints(app: Flask) -> None:
    from .proxy.paths import AnyPathConverter

    app.url_map.converters["anypath"] = AnyPathConverter
    from .accounts.routes import auth_blp, users_blp
    from .admin.routes import blp as admin_blp
    from .analytics.pages import pages as dashboard_pages
    from .analytics.routes import blp as analytics_blp
    from .bundles.routes import blp as bundles_blp
    from .health.routes import blp as health_blp
    from .ledger.routes import blp as currency_blp
    from .notifications.routes import blp as webhooks_blp
    from .payments.routes import blp as payments_blp
    from .payments.routes import mock_blp as mock_provider_blp
    from .payments.routes import webhook_blp as payment_webhook_blp
    from .plans.routes import blp as plans_blp
    from .proxy.routes import blp as proxy_blp
    from .referrals.routes import blp as referrals_blp
    from .tokens.routes import blp as tokens_blp
    from .tokens.routes import renewal_blp as auto_renewal_blp

    for blueprint in (health_blp, auth_blp, users_blp, tokens_blp, proxy_blp, currency_blp, payments_blp,
                      payment_webhook_blp, mock_provider_blp, admin_blp, bundles_blp, referrals_blp, plans_blp,
                      webhooks_blp, auto_renewal_blp, analytics_blp):
        api.register_blueprint(blueprint)
    app.register_blueprint(dashboard_pages)  # HTML pages, not part of the API (nor of its OpenAPI document)


def create_app(config_overrides: Mapping[str, Any] | None = None) -> Flask:
    env_file = load_env_file()
    app = Flask(__name__, instance_path=os.environ.get("ZENZEFI_INSTANCE_PATH") or None,
                instance_relative_config=True)
    os.makedirs(app.instance_path, exist_ok=True)
    app.config.from_mapping(build_config(app.instance_path, config_overrides))
    app.extensions["zenzefi-env-file"] = env_file
    _configure_logging(app.config["LOG_LEVEL"])

    from .proxy.entry import ProxyFastPath

    # Forwarded proxy requests skip Flask (proxy/entry.py); inside ProxyFix, which gives them the client's address.
    app.wsgi_app = ProxyFastPath(app, app.wsgi_app)
    if app.config["TRUSTED_PROXY_HOPS"] > 0:
        hops = app.config["TRUSTED_PROXY_HOPS"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)

    # The desktop client's local origins only; never `*` together with credentials.
    CORS(app, resources={r"/api/*": {"origins": app.config["CORS_ORIGINS"]}}, supports_credentials=True,
         always_send=False,
         expose_headers=["Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"])
    jsonbody.init_app(app)  # before the limiter's hooks: bodies are capped before anything could read one
    db.init_app(app)
    release_session_on_teardown(app)  # after db.init_app: runs before its teardown
    migrate.init_app(app, db, directory=os.path.join(os.path.dirname(os.path.dirname(__file__)), "migrations"))
    redis_connection.init_app(app)
    jwt.init_app(app)
    limit_headers.init_app(app)  # before the limiter: its after-request hook must run after the limiter's
    register_api_rate_limit()
    limiter.init_app(app)
    api.init_app(app, spec_kwargs={"components": {"securitySchemes": SECURITY_SCHEMES}})
    with app.app_context():
        _sqlite_pragmas(app)

    from .accounts.auth import init_jwt

    init_jwt(jwt)
    register_error_handlers(app)
    register_blueprints(app)

    from .analytics.pages import PageSecurityHeaders
    from .analytics.rollups import subscribe as write_usage_rollups
    from .proxy.subscriptions import subscribe as follow_domain_events

    PageSecurityHeaders(app)  # one per app: Talisman keeps the app it was given
    write_usage_rollups()
    follow_domain_events()  # the proxy's cache and sessions follow revokes, gifts, expiry, deactivation, plans
    register_gauges()
    http_metrics.init_app(app)

    from .cli import register_commands

    register_commands(app)
    if app.config["EMBEDDED"] and app.config["INLINE_SCHEDULER"]:
        from .jobs.inline import start_inline_scheduler

        start_inline_scheduler(app)
    return app
