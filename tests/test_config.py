from __future__ import annotations

import re
from decimal import Decimal

import pytest

from zenzefi_backend.config import ConfigError, build_config, normalise_database_url

STRONG = "q8Zr-2vLk9Wx4Tn7Bc1Hy6Jm3Fd5Sg0Pa"


def production(**env) -> dict:
    base = {"ZENZEFI_ENV": "production", "SECRET_KEY": STRONG, "JWT_SECRET_KEY": STRONG + "j",
            "PAYMENT_PROVIDER": "gateway", "PAYMENT_GATEWAY_URL": "https://pay.example.com/checkout/{payment_id}",
            "PAYMENT_WEBHOOK_SECRET": STRONG + "p"}
    base.update(env)
    return base


def test_embedded_default_without_service_urls(tmp_path):
    config = build_config(str(tmp_path), environ={})
    assert config["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path / 'zenzefi.db'}"
    assert config["EMBEDDED"] is True and config["REDIS_URL"] is None
    assert config["RATELIMIT_STORAGE_URI"] == "memory://"
    assert config["MOCK_PAYMENTS_ENABLED"] is True
    assert config["TOKEN_PRICE_24H"] == Decimal("18")


def test_production_starts_with_strong_secrets(tmp_path):
    config = build_config(str(tmp_path), environ=production(DATABASE_URL="postgres://u@db/z", REDIS_URL="redis://r"))
    assert config["SQLALCHEMY_DATABASE_URI"] == "postgresql+psycopg://u@db/z"
    assert config["RATELIMIT_STORAGE_URI"] == "redis://r"
    assert config["MOCK_PAYMENTS_ENABLED"] is False
    assert config["WEBHOOK_ALLOW_PRIVATE_TARGETS"] is False


@pytest.mark.parametrize(
    "env, named",
    [
        ({"SECRET_KEY": ""}, "SECRET_KEY is missing"),
        ({"JWT_SECRET_KEY": "short"}, "JWT_SECRET_KEY is weak"),
        ({"PAYMENT_WEBHOOK_SECRET": "a" * 40}, "PAYMENT_WEBHOOK_SECRET is weak"),
        ({"SECRET_KEY": "dev-insecure-" + STRONG}, "SECRET_KEY is weak"),
    ],
)
def test_production_refuses_missing_or_weak_secrets_and_names_them(tmp_path, env, named):
    with pytest.raises(ConfigError, match=named):
        build_config(str(tmp_path), environ=production(**env))


def test_bad_values_are_reported_by_name(tmp_path):
    with pytest.raises(ConfigError, match="SESSION_IDLE_SECONDS"):
        build_config(str(tmp_path), environ={"SESSION_IDLE_SECONDS": "soon"})
    with pytest.raises(ConfigError, match="ZENZEFI_ENV"):
        build_config(str(tmp_path), environ={"ZENZEFI_ENV": "staging"})


def test_create_app_refuses_to_start_in_production_without_secrets(monkeypatch, tmp_path):
    from zenzefi_backend import create_app

    monkeypatch.setenv("ZENZEFI_INSTANCE_PATH", str(tmp_path))
    for name in ("SECRET_KEY", "JWT_SECRET_KEY", "PAYMENT_WEBHOOK_SECRET"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="SECRET_KEY is missing"):
        create_app({"ZENZEFI_ENV": "production"})


@pytest.mark.parametrize(
    "url, expected",
    [("postgres://a@b/c", "postgresql+psycopg://a@b/c"), ("postgresql://a@b/c", "postgresql+psycopg://a@b/c"),
     ("postgresql+psycopg://a@b/c", "postgresql+psycopg://a@b/c"), ("sqlite:///x.db", "sqlite:///x.db")],
)
def test_database_urls_use_psycopg3(url, expected):
    assert normalise_database_url(url) == expected


def test_trusted_proxy_hops_decide_the_client_address_and_scheme(backends, tmp_path):
    from flask import request

    from tests.support import app_config
    from zenzefi_backend import create_app

    for hops, expected in ((0, ("127.0.0.1", "http")), (1, ("203.0.113.7", "https"))):
        app = create_app(app_config(backends, tmp_path, TRUSTED_PROXY_HOPS=hops))

        @app.get("/whoami")
        def whoami():
            return {"who": [request.remote_addr, request.scheme]}

        response = app.test_client().get("/whoami", headers={"X-Forwarded-For": "203.0.113.7",
                                                             "X-Forwarded-Proto": "https"})
        assert tuple(response.get_json()["who"]) == expected


@pytest.mark.parametrize("env", [{"TOKEN_PRICE_1H": "0"}, {"TOKEN_PRICE_12H": "-5"}, {"TOKEN_PRICE_7D": "1.005"},
                                 {"ZNC_RATE_USD": "abc"}, {"TOKEN_PRICE_30D": "2000000"}])
def test_prices_and_rates_must_be_valid_money(tmp_path, env):
    (name,) = env
    with pytest.raises(ConfigError, match=name):
        build_config(str(tmp_path), environ=env)


# --- payment providers (SPEC §6) -------------------------------------------------------------------------------------

STRIPE = {"PAYMENT_PROVIDER": "stripe", "STRIPE_API_KEY": "sk_live_" + STRONG,
          "STRIPE_WEBHOOK_SECRET": "whsec_" + STRONG}
YOOKASSA = {"PAYMENT_PROVIDER": "yookassa", "YOOKASSA_SHOP_ID": "123456", "YOOKASSA_SECRET_KEY": "live_" + STRONG}


def test_development_takes_payments_through_the_mock_provider_by_default(tmp_path):
    config = build_config(str(tmp_path), environ={})
    assert config["PAYMENT_PROVIDER"] == "mock" and config["MOCK_PAYMENTS_ENABLED"] is True


@pytest.mark.parametrize("env", [STRIPE, YOOKASSA, {"PAYMENT_PROVIDER": "mock", "MOCK_PAYMENTS_ENABLED": "true"}])
def test_production_starts_with_each_provider_and_its_credentials(tmp_path, env):
    config = build_config(str(tmp_path), environ=production(PAYMENT_GATEWAY_URL="", **env))
    assert config["PAYMENT_PROVIDER"] == env["PAYMENT_PROVIDER"]


def test_stripe_and_yookassa_do_not_need_the_gateway_webhook_secret(tmp_path):
    for env in (STRIPE, YOOKASSA):
        assert build_config(str(tmp_path), environ=production(PAYMENT_WEBHOOK_SECRET="", **env))


@pytest.mark.parametrize(
    "env, named",
    [
        ({"PAYMENT_PROVIDER": ""}, "PAYMENT_PROVIDER is missing"),
        ({"PAYMENT_PROVIDER": "paypal"}, "PAYMENT_PROVIDER must be one of mock, gateway, stripe, yookassa"),
        ({"PAYMENT_GATEWAY_URL": ""}, "PAYMENT_GATEWAY_URL is missing"),
        ({"PAYMENT_WEBHOOK_SECRET": ""}, "PAYMENT_WEBHOOK_SECRET is missing"),
        ({"PAYMENT_GATEWAY_URL": "http://pay.example.com/{payment_id}"}, "PAYMENT_GATEWAY_URL must use https"),
        ({"PAYMENT_GATEWAY_URL": "https://pay.example.com/checkout"},
         "must be an absolute URL containing {payment_id}"),
        ({**STRIPE, "STRIPE_API_KEY": ""}, "STRIPE_API_KEY is missing"),
        ({**STRIPE, "STRIPE_WEBHOOK_SECRET": ""}, "STRIPE_WEBHOOK_SECRET is missing"),
        ({**STRIPE, "STRIPE_API_KEY": "pk_live_" + STRONG}, "STRIPE_API_KEY must be a secret key"),
        ({**STRIPE, "STRIPE_WEBHOOK_SECRET": STRONG}, "STRIPE_WEBHOOK_SECRET must be the endpoint's signing secret"),
        ({**YOOKASSA, "YOOKASSA_SHOP_ID": ""}, "YOOKASSA_SHOP_ID is missing"),
        ({**YOOKASSA, "YOOKASSA_SECRET_KEY": ""}, "YOOKASSA_SECRET_KEY is missing"),
        ({"PAYMENT_PROVIDER": "mock"}, "PAYMENT_PROVIDER=mock needs MOCK_PAYMENTS_ENABLED=true"),
    ],
)
def test_production_refuses_a_provider_without_what_it_needs_and_names_it(tmp_path, env, named):
    with pytest.raises(ConfigError, match=re.escape(named)):
        build_config(str(tmp_path), environ=production(**env))


def test_every_missing_credential_is_named_at_once(tmp_path):
    with pytest.raises(ConfigError) as raised:
        build_config(str(tmp_path), environ=production(SECRET_KEY="", PAYMENT_PROVIDER="stripe"))
    assert all(name in str(raised.value) for name in ("SECRET_KEY is missing", "STRIPE_API_KEY is missing",
                                                      "STRIPE_WEBHOOK_SECRET is missing"))


def test_outside_production_a_provider_still_needs_its_credentials(tmp_path):
    with pytest.raises(ConfigError, match="STRIPE_API_KEY is missing"):
        build_config(str(tmp_path), environ={"PAYMENT_PROVIDER": "stripe", "STRIPE_WEBHOOK_SECRET": "whsec_x"})
    gateway = build_config(str(tmp_path), environ={"PAYMENT_PROVIDER": "gateway",
                                                   "PAYMENT_GATEWAY_URL": "http://127.0.0.1:9/pay/{payment_id}"})
    assert gateway["PAYMENT_WEBHOOK_SECRET"].startswith("dev-insecure-")  # http and a dev secret: fine here


def test_yookassa_networks_default_to_the_librarys_list_and_are_validated(tmp_path):
    from yookassa.domain.common.security_helper import SecurityHelper

    assert build_config(str(tmp_path), environ={})["YOOKASSA_WEBHOOK_NETWORKS"] == SecurityHelper.YOOKASSA_NETWORKS
    custom = build_config(str(tmp_path), environ={"YOOKASSA_WEBHOOK_NETWORKS": "203.0.113.0/24, 2001:db8::1"})
    assert custom["YOOKASSA_WEBHOOK_NETWORKS"] == ["203.0.113.0/24", "2001:db8::1"]
    with pytest.raises(ConfigError, match="YOOKASSA_WEBHOOK_NETWORKS: 'example.com'"):
        build_config(str(tmp_path), environ={"YOOKASSA_WEBHOOK_NETWORKS": "203.0.113.0/24,example.com"})


def test_create_app_refuses_to_start_in_production_without_a_payment_provider(monkeypatch, tmp_path):
    from zenzefi_backend import create_app

    monkeypatch.setenv("ZENZEFI_INSTANCE_PATH", str(tmp_path))
    monkeypatch.delenv("PAYMENT_PROVIDER", raising=False)
    with pytest.raises(ConfigError, match="PAYMENT_PROVIDER is missing"):
        create_app({"ZENZEFI_ENV": "production", "SECRET_KEY": STRONG, "JWT_SECRET_KEY": STRONG + "j"})
