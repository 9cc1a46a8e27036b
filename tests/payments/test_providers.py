"""The provider interface and registry, and `GET /api/v1/currency/providers`."""
from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from zenzefi_backend.payments.providers import (
    AmountNotAccepted,
    PaymentProvider,
    ProviderVerdict,
    UnknownProvider,
    configured_provider,
    get_provider,
    provider_class,
)

PROVIDERS = "/api/v1/currency/providers"


@pytest.mark.parametrize("name", ["mock", "gateway", "stripe", "yookassa"])
def test_every_provider_is_registered_under_its_name(name):
    found = provider_class(name)
    assert issubclass(found, PaymentProvider) and found.name == name
    assert found.reconciles is (name in ("stripe", "yookassa"))


def test_an_unknown_provider_is_a_503_not_a_crash(app_ctx):
    with pytest.raises(UnknownProvider) as raised:
        get_provider("paypal")
    assert raised.value.code == 503


def test_the_configured_provider_is_built_from_the_app_config(app, app_ctx):
    assert configured_provider().name == app.config["PAYMENT_PROVIDER"] == "mock"
    assert configured_provider().config is app.config


@pytest.mark.parametrize("amount, currency, message", [
    (Decimal("0.49"), "USD", "below the stripe minimum of 0.50 USD"),
    (Decimal("10.00"), "RUB", "does not take RUB"),
    (Decimal("1000000.00"), "EUR", "above the stripe maximum"),
    (Decimal("1.001"), "USD", "USD has 2 decimals"),
])
def test_check_amount_refuses_what_the_provider_cannot_take(app_ctx, amount, currency, message):
    with pytest.raises(AmountNotAccepted, match=message) as raised:
        get_provider("stripe").check_amount(amount, currency)
    assert raised.value.code == 422 and "amount_znc" in raised.value.extra["errors"]


def test_a_verdict_has_a_known_status_and_names_its_payment():
    with pytest.raises(ValueError):
        ProviderVerdict(provider_payment_id="x", status="paid")
    with pytest.raises(ValueError):
        ProviderVerdict(provider_payment_id=None, status="succeeded")
    assert ProviderVerdict(provider_payment_id=None, status="succeeded", payment_id=uuid.uuid4())


def test_the_providers_endpoint_in_mock_mode(client):
    response = client.get(PROVIDERS)
    assert response.status_code == 200
    assert response.get_json() == {"provider": "mock", "available": True, "currencies": ["RUB", "USD", "EUR"],
                                   "minimums": {}, "reconciles": False}


def test_the_providers_endpoint_when_mock_payments_are_off(client, mock_payments_disabled):
    assert client.get(PROVIDERS).get_json() == {"provider": "mock", "available": False, "currencies": [],
                                                "minimums": {}, "reconciles": False}


def test_the_provider_routes_are_documented(client):
    paths = client.get("/openapi.json").get_json()["paths"]
    providers = paths[PROVIDERS]["get"]
    assert providers["security"] == [] and "200" in providers["responses"]
    schema = providers["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema["$ref"].endswith("/Providers")
    stripe = paths["/api/v1/webhooks/payment/stripe"]["post"]
    assert stripe["security"] == [] and [p["name"] for p in stripe["parameters"]] == ["Stripe-Signature"]
    assert {"200", "400", "401", "404", "413", "422"} <= set(stripe["responses"])
    yookassa = paths["/api/v1/webhooks/payment/yookassa"]["post"]
    assert yookassa["security"] == [] and {"200", "403", "404", "413", "503"} <= set(yookassa["responses"])
