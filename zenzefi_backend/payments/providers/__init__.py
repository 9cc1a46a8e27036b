"""The provider registry: `PAYMENT_PROVIDER` names one module of this package (mock, gateway, stripe, yookassa).

Modules are imported on first use, so a provider's library is loaded only where that provider is configured."""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from flask import current_app

from ...config import PAYMENT_PROVIDER_NAMES
from ...errors import ServiceUnavailable
from .base import (
    AmountNotAccepted,
    CallbackRejected,
    Checkout,
    PaymentProvider,
    ProviderUnavailable,
    ProviderVerdict,
)

__all__ = ["PROVIDERS", "AmountNotAccepted", "CallbackRejected", "Checkout", "PaymentProvider",
           "ProviderUnavailable", "ProviderVerdict", "UnknownProvider", "configured_provider", "get_provider",
           "provider_class"]

# name → class, filled on first lookup of each name (see `provider_class`).
PROVIDERS: dict[str, type[PaymentProvider]] = {}


class UnknownProvider(ServiceUnavailable):
    message = "No payment provider is configured."


def provider_class(name: str) -> type[PaymentProvider]:
    """The class registered under `name`: the PaymentProvider subclass in the module of that name."""
    if name not in PAYMENT_PROVIDER_NAMES:
        raise UnknownProvider(f"Unknown payment provider {name!r}.")
    if name not in PROVIDERS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise UnknownProvider(f"The {name} payment provider is not available in this build.") from None
        found = [obj for obj in vars(module).values() if isinstance(obj, type) and issubclass(obj, PaymentProvider)
                 and obj is not PaymentProvider and getattr(obj, "name", None) == name]
        if len(found) != 1:
            raise RuntimeError(f"module {module.__name__} must define one PaymentProvider named {name!r}")
        PROVIDERS[name] = found[0]
    return PROVIDERS[name]


def get_provider(name: str, config: Mapping[str, Any] | None = None) -> PaymentProvider:
    """A provider instance built from `config` (default: the app's)."""
    return provider_class(name)(current_app.config if config is None else config)


def configured_provider() -> PaymentProvider:
    """The provider `PAYMENT_PROVIDER` names (validated at start-up)."""
    return get_provider(current_app.config["PAYMENT_PROVIDER"])
