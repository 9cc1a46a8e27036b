"""The payment provider interface: every provider creates a checkout, verifies its own callbacks and (when it
has a status call) says what it knows about one payment. What a provider says is a `ProviderVerdict`; only
`payments.services.settle` turns a verdict into a state change and a credit."""
from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar

from ...errors import ServiceUnavailable, ValidationFailed, ZenzefiError
from ...money import has_at_most_decimals

if TYPE_CHECKING:
    from ..models import Payment

VERDICT_STATUSES = ("pending", "succeeded", "canceled", "expired")
# Decimal places of each currency's minor unit (ISO 4217); what a provider is sent and must send back.
CURRENCY_DECIMALS: dict[str, int] = {"RUB": 2, "USD": 2, "EUR": 2}


@dataclass(frozen=True)
class Checkout:
    """What `create_checkout` returns: the provider's id of the payment and where the customer pays it."""

    provider_payment_id: str
    payment_url: str


@dataclass(frozen=True)
class ProviderVerdict:
    """What the provider says about one payment: a verified callback or a status fetch.

    `settle` checks every field that is not None against the payment row before it changes anything."""

    provider_payment_id: str | None  # None only for the X-Zenzefi-Signature protocol, which does not carry it
    status: str  # "pending" | "succeeded" | "canceled" | "expired"
    payment_id: uuid.UUID | None = None  # OUR payment id as the provider carries it (metadata/client_reference_id)
    amount: Decimal | None = None  # in `currency`, as the provider says
    currency: str | None = None
    event_id: str | None = None  # the provider's event id for replay detection; None for a fetch
    amount_znc: Decimal | None = None  # the X-Zenzefi-Signature protocol speaks ZNC, not the payment's currency
    event_type: str | None = None  # the provider's name for the event (stored with the event id, audited)

    def __post_init__(self) -> None:
        if self.status not in VERDICT_STATUSES:
            raise ValueError(f"unknown verdict status {self.status!r}")
        if self.payment_id is None and not self.provider_payment_id:
            raise ValueError("a verdict names the payment by our id or the provider's")


class ProviderUnavailable(ServiceUnavailable):
    """The provider could not be reached, timed out or answered 5xx: 503, nothing stored, try again later."""

    message = "The payment provider is unavailable; try again shortly."


class CallbackRejected(ZenzefiError):
    """A forged, mismatched or malformed callback: a 4xx that changes nothing. `reason` (a short snake_case
    word such as `signature_mismatch`, `network_not_allowed`) goes into the audit entry; never a secret."""

    code = 400
    message = "Callback rejected."

    def __init__(self, reason: str, message: str | None = None, *, status: int = 400):
        if not 400 <= status < 500:
            raise ValueError("a rejected callback is a 4xx")
        super().__init__(message)
        self.code = status
        self.reason = reason


class AmountNotAccepted(ValidationFailed):
    """The provider cannot take this amount (below its minimum, too many decimals, currency not taken): 422."""

    def __init__(self, message: str):
        super().__init__({"amount_znc": [message]}, message)


class PaymentProvider(ABC):
    """One payment provider. Instances are cheap: built per use from the app config, no global state."""

    name: ClassVar[str]
    currencies: ClassVar[tuple[str, ...]]
    reconciles: ClassVar[bool] = False  # has a status call (stripe, yookassa); gateway and mock don't
    minimums: ClassVar[Mapping[str, Decimal]] = {}  # smallest amount per currency the provider takes
    maximums: ClassVar[Mapping[str, Decimal]] = {}  # largest amount per currency the provider takes

    def __init__(self, config: Mapping[str, Any]):
        self.config = config

    def check_amount(self, amount: Decimal, currency: str) -> None:
        """422 before any call to the provider when it cannot take `amount` in `currency`."""
        if currency not in self.currencies:
            raise AmountNotAccepted(f"The {self.name} provider does not take {currency}; "
                                    f"pay in {', '.join(self.currencies)}.")
        decimals = CURRENCY_DECIMALS.get(currency, 2)
        if amount <= 0 or not has_at_most_decimals(amount, decimals):
            raise AmountNotAccepted(f"{amount} {currency} cannot be paid: {currency} has {decimals} decimals "
                                    f"and the amount must be above 0.")
        minimum = self.minimums.get(currency)
        if minimum is not None and amount < minimum:
            raise AmountNotAccepted(f"{amount} {currency} is below the {self.name} minimum of {minimum} {currency}; "
                                    f"buy more ZNC.")
        maximum = self.maximums.get(currency)
        if maximum is not None and amount > maximum:
            raise AmountNotAccepted(f"{amount} {currency} is above the {self.name} maximum of {maximum} {currency}.")

    @abstractmethod
    def create_checkout(self, payment: Payment, return_url: str | None) -> Checkout:
        """Create the payment at the provider (idempotent on `payment.id`); ProviderUnavailable when it is down.

        `payment` is not stored yet: its id, amounts, currency, user and expiry are final."""

    @abstractmethod
    def verify_callback(self, raw_body: bytes, headers: Mapping[str, str], client_ip: str) -> ProviderVerdict | None:
        """Prove and parse one callback. Raise CallbackRejected (or another 4xx domain error) for anything forged
        or malformed; return None for a well-formed event we ignore (answered 200 `processed: false`)."""

    def fetch(self, payment: Payment) -> ProviderVerdict:
        """The provider's current word on `payment` (reconciliation); ProviderUnavailable when it is down."""
        raise NotImplementedError(f"the {self.name} provider has no status call")
