"""Settings read once from the environment (and `.env`) into the Flask config.

`SETTINGS` is the single list of what can be configured; the README's configuration table is
generated from it (`python -m zenzefi_backend.config`), so the two never drift apart. `REDIS_URL` is read by
`config.redis_url`, which also builds every Redis client from what it parsed.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from ipaddress import ip_network
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from yookassa.domain.common.security_helper import SecurityHelper

from .redis_url import RedisUrlError, parse_redis_url

DEV_SECRET_PREFIX = "dev-insecure-"  # noqa: S105 - marks development defaults, never a real secret
MIN_SECRET_LENGTH = 32
PRODUCTION_SECRETS = ("SECRET_KEY", "JWT_SECRET_KEY")
# Filled with a development default outside production when unset.
DEFAULTED_SECRETS = (*PRODUCTION_SECRETS, "PAYMENT_WEBHOOK_SECRET")
PAYMENT_PROVIDER_NAMES = ("mock", "gateway", "stripe", "yookassa")
# What each provider cannot work without (SPEC §6); production names every one that is missing.
PAYMENT_PROVIDER_CREDENTIALS: dict[str, tuple[str, ...]] = {
    "mock": ("PAYMENT_WEBHOOK_SECRET",),
    "gateway": ("PAYMENT_WEBHOOK_SECRET", "PAYMENT_GATEWAY_URL"),
    "stripe": ("STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRET"),
    "yookassa": ("YOOKASSA_SHOP_ID", "YOOKASSA_SECRET_KEY"),
}
GATEWAY_URL_PLACEHOLDER = "{payment_id}"
WEAK_SECRETS = {"changeme", "secret", "password", "please-change-me"}
# Swagger UI and ReDoc, pinned and served by us (ops/vendor_assets.py), so /docs and /redoc work offline.
DOCS_ASSETS = "/static/vendor"
SWAGGER_UI_DIST = f"{DOCS_ASSETS}/swagger-ui-dist-5.35.0/"
REDOC_STANDALONE = f"{DOCS_ASSETS}/redoc-2.5.4/redoc.standalone.js"


class ConfigError(RuntimeError):
    """The configuration cannot be used (raised at start-up, never at request time)."""


def as_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {value!r}")


def as_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


@dataclass(frozen=True)
class Setting:
    name: str
    cast: Callable[[str], Any]
    default: Any
    doc: str


SETTINGS: tuple[Setting, ...] = (
    Setting("ZENZEFI_ENV", str, "development", "`development`, `production` or `testing`."),
    Setting("SECRET_KEY", str, None, "Flask secret; production needs 32+ random characters."),
    Setting("JWT_SECRET_KEY", str, None, "HMAC key for JWTs; production needs 32+ random characters."),
    Setting("DATABASE_URL", str, None, "SQLAlchemy URL; unset → SQLite in `instance/zenzefi.db`."),
    Setting("DATABASE_TRANSACTION_POOLING", as_bool, False,
            "`DATABASE_URL` points at a transaction-pooling PgBouncer: no server-side prepared statements."),
    Setting("REDIS_URL", str, None, "`redis://…` or `redis+sentinel://host:port,…/service/db` (see Scaling out); "
                                    "unset → in-process stand-in, memory rate limits, inline jobs."),
    Setting("ZENZEFI_UPSTREAM_URL", str, "http://127.0.0.1:61001", "Base URL of the Zenzefi upstream server."),
    Setting("PROXY_CONNECT_TIMEOUT", float, 5.0, "Seconds to connect to the upstream (then 504)."),
    Setting("PROXY_READ_TIMEOUT", float, 60.0, "Seconds between upstream bytes (then 504)."),
    Setting("MAX_CONTENT_LENGTH", int, 100 * 1024 * 1024, "Largest request body in bytes (then 413)."),
    Setting("MAX_JSON_BODY_BYTES", int, 1024 * 1024,
            "Largest body of an API request other than a proxied one, in bytes (then 413)."),
    Setting("TOKEN_PRICE_1H", Decimal, Decimal("1"), "Price in ZNC of a 1 h token."),
    Setting("TOKEN_PRICE_12H", Decimal, Decimal("10"), "Price in ZNC of a 12 h token."),
    Setting("TOKEN_PRICE_24H", Decimal, Decimal("18"), "Price in ZNC of a 24 h token."),
    Setting("TOKEN_PRICE_7D", Decimal, Decimal("100"), "Price in ZNC of a 168 h token."),
    Setting("TOKEN_PRICE_30D", Decimal, Decimal("300"), "Price in ZNC of a 720 h token."),
    Setting("ZNC_RATE_RUB", Decimal, Decimal("10.00"), "RUB per ZNC."),
    Setting("ZNC_RATE_USD", Decimal, Decimal("0.11"), "USD per ZNC."),
    Setting("ZNC_RATE_EUR", Decimal, Decimal("0.10"), "EUR per ZNC."),
    Setting("PAYMENT_PROVIDER", str, None,
            "`mock`, `gateway`, `stripe` or `yookassa` (see Taking payments); required in production, "
            "`mock` otherwise."),
    Setting("PAYMENT_WEBHOOK_SECRET", str, None,
            "HMAC key of the `X-Zenzefi-Signature` webhook (`gateway` and `mock`); 32+ random characters."),
    Setting("PAYMENT_GATEWAY_URL", str, None,
            "`gateway`: the operator's checkout URL with `{payment_id}` in it (https in production)."),
    Setting("PAYMENT_PROVIDER_TIMEOUT", float, 10.0, "Seconds to wait for a payment provider's API (then 503)."),
    Setting("STRIPE_API_KEY", str, None, "`stripe`: secret API key (`sk_live_…`, `sk_test_…` or a restricted `rk_…`)."),
    Setting("STRIPE_WEBHOOK_SECRET", str, None, "`stripe`: the webhook endpoint's signing secret (`whsec_…`)."),
    Setting("STRIPE_API_BASE", str, None, "`stripe`: API base URL; unset → Stripe's own (tests point it elsewhere)."),
    Setting("YOOKASSA_SHOP_ID", str, None, "`yookassa`: shop id (`shopId`)."),
    Setting("YOOKASSA_SECRET_KEY", str, None, "`yookassa`: secret key."),
    Setting("YOOKASSA_API_URL", str, None,
            "`yookassa`: API base URL; unset → YooKassa's own (tests point it elsewhere)."),
    Setting("YOOKASSA_WEBHOOK_NETWORKS", as_list, list(SecurityHelper.YOOKASSA_NETWORKS),
            "`yookassa`: comma-separated addresses/networks notifications may come from (default: the list "
            "YooKassa publishes, as the `yookassa` library ships it)."),
    Setting("MOCK_PAYMENTS_ENABLED", as_bool, None,
            "Mock provider and mock-purchase; default on except production (there only for staging)."),
    Setting("SMTP_HOST", str, None, "SMTP server; unset → e-mails written as `.eml` under `instance/mail/`."),
    Setting("SMTP_PORT", int, 25, "SMTP port."),
    Setting("SMTP_USERNAME", str, None, "SMTP user (optional)."),
    Setting("SMTP_PASSWORD", str, None, "SMTP password (optional)."),
    Setting("SMTP_USE_TLS", as_bool, False, "STARTTLS to the SMTP server."),
    Setting("MAIL_FROM", str, "Zenzefi <no-reply@zenzefi.local>", "Sender of our e-mails."),
    Setting("FRONTEND_URL", str, "http://localhost:3000", "Base of links in e-mails and referral links."),
    Setting("RATELIMIT_ENABLED", as_bool, True, "Turn every rate limit on or off."),
    Setting("RATELIMIT_REGISTER", str, "5 per hour", "Registrations per client IP."),
    Setting("RATELIMIT_LOGIN_FAILED", str, "5 per hour", "Failed logins per client IP and e-mail."),
    Setting("RATELIMIT_PROXY_FREE", int, 1000, "Proxied requests per minute per token, free plan."),
    Setting("RATELIMIT_PROXY_PREMIUM", int, 3000, "Proxied requests per minute per token, premium plan."),
    Setting("RATELIMIT_PROXY_ENTERPRISE", int, 10000, "Proxied requests per minute per token, enterprise plan."),
    Setting("RATELIMIT_API_FREE", int, 100, "API requests per minute per user (or client IP), free plan."),
    Setting("RATELIMIT_API_PREMIUM", int, 500, "API requests per minute per user, premium plan."),
    Setting("RATELIMIT_API_ENTERPRISE", int, 2000, "API requests per minute per user, enterprise plan."),
    Setting("PLAN_PRICE_PREMIUM", Decimal, Decimal("10"), "Price in ZNC of 30 days of the premium plan."),
    Setting("PLAN_PRICE_ENTERPRISE", Decimal, Decimal("50"), "Price in ZNC of 30 days of the enterprise plan."),
    Setting("TRUSTED_PROXY_HOPS", int, 0, "Reverse proxies in front of us whose X-Forwarded-For is trusted."),
    Setting(
        "CORS_ORIGINS",
        as_list,
        [
            "http://localhost:61000",
            "https://localhost:61000",
            "http://127.0.0.1:61000",
            "https://127.0.0.1:61000",
        ],
        "Comma-separated origins allowed by CORS (the desktop client's local origins).",
    ),
    Setting("METRICS_TOKEN", str, None, "If set, `/metrics` needs `Authorization: Bearer <token>`."),
    Setting("WEBHOOK_ALLOW_PRIVATE_TARGETS", as_bool, None, "Allow webhooks to private addresses (dev/tests)."),
    Setting("SESSION_IDLE_SECONDS", int, 300, "Idle seconds before a device releases a token."),
    Setting("AUDIT_RETENTION_DAYS", int, 30, "Days audit log rows are kept."),
    Setting("DELIVERY_LOG_RETENTION_DAYS", int, 30,
            "Days finished webhook deliveries, sent e-mails and relayed outbox events are kept."),
    Setting("ANALYTICS_CACHE_SECONDS", int, 300,
            "How long the analytics endpoints keep a user's (or the global) figures in Redis."),
    Setting("PASSWORD_HASH_TIME_COST", int, 3, "Argon2id time cost."),
    Setting("PASSWORD_HASH_MEMORY_KIB", int, 65536, "Argon2id memory cost in KiB."),
    Setting("HEALTH_REFRESH_SECONDS", int, 50, "How often the cached health check is refreshed."),
    Setting("HEALTH_TTL_SECONDS", int, 120, "How long a cached health result is trusted."),
    Setting("LOG_LEVEL", str, "INFO", "Python logging level."),
    Setting("ZENZEFI_ENV_FILE", str, None,
            "Env file read at start-up (`none`: none); unset → the first `.env` from the project directory upward. "
            "Only from the process environment; variables already set win over the file."),
    Setting("INLINE_SCHEDULER", as_bool, False,
            "Embedded default only: run the periodic jobs in a thread of the web process (`dev.py serve` sets it)."),
)


ENV_FILE_VARIABLE = "ZENZEFI_ENV_FILE"


@dataclass(frozen=True)
class EnvFile:
    """Which env file was read at start-up and which variables it set (names only: values can be secrets)."""

    path: str | None
    applied: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()  # already set in the process environment, which wins


def load_env_file(environ: Mapping[str, str] | None = None) -> EnvFile:
    """Read the env file into the process environment, never over a variable already set: ZENZEFI_ENV_FILE
    names it (`none`: read none), else the first `.env` found from the project directory upward. Runs before
    `build_config`, so the file's values are read like any other variable's."""
    from dotenv import dotenv_values, find_dotenv, load_dotenv

    environ = os.environ if environ is None else environ
    chosen = (environ.get(ENV_FILE_VARIABLE) or "").strip()
    if chosen.lower() == "none":
        return EnvFile(None)
    if chosen and not os.path.isfile(chosen):
        raise ConfigError(f"{ENV_FILE_VARIABLE}: no such file: {chosen}")
    path = chosen or find_dotenv()
    if not path:
        return EnvFile(None)
    names = list(dotenv_values(path))
    already = tuple(name for name in names if name in environ)
    load_dotenv(path, override=False)
    return EnvFile(os.path.abspath(path), tuple(name for name in names if name not in already), already)


def _read_env(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = environ.get(setting.name)
        if raw is None or raw == "":
            values[setting.name] = setting.default
            continue
        try:
            values[setting.name] = setting.cast(raw)
        except (ValueError, ArithmeticError) as exc:
            raise ConfigError(f"{setting.name}: {exc}") from exc
    return values


def _check_amounts(values: Mapping[str, Any]) -> None:
    """Prices and rates are money: > 0, at most 2 decimals, ≤ 1,000,000.00 (a 0 price would be a 500 later)."""
    from ..money import InvalidAmount, parse_amount

    for name in [s.name for s in SETTINGS if s.name.startswith(("TOKEN_PRICE_", "ZNC_RATE_", "PLAN_PRICE_"))]:
        try:
            parse_amount(str(values[name]))
        except InvalidAmount as exc:
            raise ConfigError(f"{name}: {exc}") from None


def normalise_database_url(url: str) -> str:
    """`postgres://` and bare `postgresql://` mean psycopg2 to SQLAlchemy; we ship psycopg 3."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def _engine_options(database_url: str, *, transaction_pooling: bool) -> dict[str, Any]:
    """SQLAlchemy engine options: pre-pinged pooled connections, bounded waits."""
    if database_url.startswith("sqlite"):
        return {"pool_pre_ping": True, "connect_args": {"timeout": 15}}
    connect_args: dict[str, Any] = {"connect_timeout": 3}
    if transaction_pooling:
        # Each transaction may run on another server connection, which never saw our PREPARE: psycopg must not
        # prepare statements on the server (it would after 5 runs of one query). Nothing else we do keeps
        # session state (no SET, advisory locks, LISTEN or temporary tables).
        connect_args["prepare_threshold"] = None
    return {"pool_pre_ping": True, "pool_size": 10, "max_overflow": 10, "pool_timeout": 5,
            "connect_args": connect_args}


def _secret_problems(values: Mapping[str, Any], names: tuple[str, ...]) -> list[str]:
    problems = []
    for name in names:
        secret = values.get(name)
        if not secret:
            problems.append(f"{name} is missing")
        elif (
            len(secret) < MIN_SECRET_LENGTH
            or secret.startswith(DEV_SECRET_PREFIX)
            or secret.lower() in WEAK_SECRETS
            or len(set(secret)) < 8
        ):
            problems.append(f"{name} is weak (use {MIN_SECRET_LENGTH}+ random characters)")
    return problems


def _payment_provider_problems(values: Mapping[str, Any], production: bool) -> list[str]:
    """What the configured provider lacks (SPEC §6), each named; production also demands https and real secrets."""
    provider = values.get("PAYMENT_PROVIDER")
    if not provider:
        return [f"PAYMENT_PROVIDER is missing (one of {', '.join(PAYMENT_PROVIDER_NAMES)})"]
    if provider not in PAYMENT_PROVIDER_NAMES:
        return [f"PAYMENT_PROVIDER must be one of {', '.join(PAYMENT_PROVIDER_NAMES)}, not {provider!r}"]
    needed = PAYMENT_PROVIDER_CREDENTIALS[provider]
    # The webhook secret is strength-checked in production and has a development default elsewhere.
    problems = _secret_problems(values, ("PAYMENT_WEBHOOK_SECRET",)) if production and \
        "PAYMENT_WEBHOOK_SECRET" in needed else []
    problems += [f"{name} is missing" for name in needed if name != "PAYMENT_WEBHOOK_SECRET" and not values.get(name)]
    gateway_url = values.get("PAYMENT_GATEWAY_URL")
    if provider == "gateway" and gateway_url:
        parts = urlsplit(gateway_url)
        if GATEWAY_URL_PLACEHOLDER not in gateway_url or parts.scheme not in {"http", "https"} or not parts.netloc:
            problems.append(f"PAYMENT_GATEWAY_URL must be an absolute URL containing {GATEWAY_URL_PLACEHOLDER}")
        elif production and parts.scheme != "https":
            problems.append("PAYMENT_GATEWAY_URL must use https in production")
    if provider == "mock" and production and not values.get("MOCK_PAYMENTS_ENABLED"):
        problems.append("PAYMENT_PROVIDER=mock needs MOCK_PAYMENTS_ENABLED=true (staging only)")
    if provider == "stripe":
        key, secret = values.get("STRIPE_API_KEY"), values.get("STRIPE_WEBHOOK_SECRET")
        if key and not key.startswith(("sk_", "rk_")):
            problems.append("STRIPE_API_KEY must be a secret key (sk_…) or a restricted key (rk_…)")
        if secret and not secret.startswith("whsec_"):
            problems.append("STRIPE_WEBHOOK_SECRET must be the endpoint's signing secret (whsec_…)")
    return problems


def _check_networks(values: Mapping[str, Any]) -> None:
    for network in values.get("YOOKASSA_WEBHOOK_NETWORKS") or []:
        try:
            ip_network(network, strict=False)
        except ValueError:
            raise ConfigError(f"YOOKASSA_WEBHOOK_NETWORKS: {network!r} is not an address or network") from None


def build_config(
    instance_path: str, overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Everything the app reads from `current_app.config`, resolved once."""
    values = _read_env(os.environ if environ is None else environ)
    values.update(overrides or {})
    env = values["ZENZEFI_ENV"]
    if env not in {"development", "production", "testing"}:
        raise ConfigError(f"ZENZEFI_ENV must be development, production or testing, not {env!r}")
    production = env == "production"
    _check_amounts(values)
    if values.get("MOCK_PAYMENTS_ENABLED") is None:
        values["MOCK_PAYMENTS_ENABLED"] = not production
    if not values.get("PAYMENT_PROVIDER") and not production:
        values["PAYMENT_PROVIDER"] = "mock"
    problems = (_secret_problems(values, PRODUCTION_SECRETS) if production else []) + \
        _payment_provider_problems(values, production)
    if problems:
        raise ConfigError(("refusing to start in production: " if production else "refusing to start: ")
                          + "; ".join(problems))
    _check_networks(values)
    for name in DEFAULTED_SECRETS:
        values[name] = values.get(name) or f"{DEV_SECRET_PREFIX}{name.lower()}-do-not-use-in-production"
    if values.get("WEBHOOK_ALLOW_PRIVATE_TARGETS") is None:
        values["WEBHOOK_ALLOW_PRIVATE_TARGETS"] = not production

    database_url = values.get("DATABASE_URL") or f"sqlite:///{Path(instance_path) / 'zenzefi.db'}"
    database_url = normalise_database_url(database_url)
    engine_options = _engine_options(database_url, transaction_pooling=values["DATABASE_TRANSACTION_POOLING"])
    redis_url = values.get("REDIS_URL") or None
    try:
        redis_target = parse_redis_url(redis_url) if redis_url else None
    except RedisUrlError as exc:
        raise ConfigError(f"REDIS_URL: {exc}") from None
    limiter_uri, limiter_options = (
        redis_target.limiter_storage(socket_timeout=1, socket_connect_timeout=1) if redis_target else ("memory://", {})
    )

    proxy_limits = {plan: values[f"RATELIMIT_PROXY_{plan.upper()}"] for plan in ("free", "premium", "enterprise")}
    values.update(
        ENV=env,
        PROXY_RATE_LIMITS=proxy_limits,
        PROXY_RATE_LIMITS_JSON=json.dumps(proxy_limits),
        IS_PRODUCTION=production,
        EMBEDDED=redis_url is None,
        REDIS_URL=redis_url,
        REDIS_TARGET=redis_target,
        SQLALCHEMY_DATABASE_URI=database_url,
        SQLALCHEMY_ENGINE_OPTIONS=engine_options,
        SQLALCHEMY_TRACK_MODIFICATIONS=False,
        JWT_ACCESS_TOKEN_EXPIRES=timedelta(minutes=60),
        JWT_REFRESH_TOKEN_EXPIRES=timedelta(days=30),
        JWT_TOKEN_LOCATION=["headers"],
        JWT_ALGORITHM="HS256",
        RATELIMIT_STORAGE_URI=limiter_uri,
        RATELIMIT_STORAGE_OPTIONS=limiter_options,
        RATELIMIT_HEADERS_ENABLED=False,  # written by limit_headers.py (Retry-After only on a 429, rounded up)
        RATELIMIT_SWALLOW_ERRORS=True,
        RATELIMIT_KEY_PREFIX="zenzefi",
        JSON_SORT_KEYS=False,
        API_TITLE="Zenzefi backend",
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="docs",
        OPENAPI_SWAGGER_UI_URL=SWAGGER_UI_DIST,
        OPENAPI_REDOC_PATH="redoc",
        OPENAPI_REDOC_URL=REDOC_STANDALONE,
    )
    values.setdefault("TESTING", env == "testing")
    return values


def settings_table() -> str:
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for setting in SETTINGS:
        default = setting.default
        if isinstance(default, list):
            default = ",".join(default)
        shown = "—" if default is None else f"`{default}`"
        rows.append(f"| `{setting.name}` | {shown} | {setting.doc} |")
    return "\n".join(rows)

