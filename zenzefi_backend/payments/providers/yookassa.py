"""YooKassa (API v3) through the official `yookassa` library.

A top-up is a YooKassa payment with a redirect confirmation and `capture: true` (one step: paid means
`succeeded`), `Idempotence-Key` = our payment id and our id in `metadata.payment_id`. YooKassa does not sign its
notifications: one is accepted only from `YOOKASSA_WEBHOOK_NETWORKS`, and then the payment is fetched again
from the API, whose answer is the only thing trusted; the notification itself only says which payment to ask about.

The library keeps its settings in one process-wide `Configuration` and sends without a timeout (retrying POSTs on
its own over https). Here every call gets a client of the library bound to this app's settings instead, with the
configured timeout and no retries: a create is repeated by the customer, a notification by YooKassa, a status
check by the next reconciliation run.
"""
from __future__ import annotations

import ipaddress
import logging
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import requests
import yookassa
from yookassa.client import ApiClient
from yookassa.domain.common import HttpVerb, RequestObject, UserAgent
from yookassa.domain.exceptions import (
    ApiError,
    BadRequestError,
    ForbiddenError,
    GoneError,
    NotFoundError,
    UnauthorizedError,
)
from yookassa.domain.request import PaymentRequest

from ...errors import BadRequest
from ...money import format_amount
from .base import CallbackRejected, Checkout, PaymentProvider, ProviderUnavailable, ProviderVerdict
from .signed import strict_json

if TYPE_CHECKING:
    from ..models import Payment

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://api.yookassa.ru/v3"
CONNECT_TIMEOUT_SECONDS = 3.05
# YooKassa's payment statuses → ours. `waiting_for_capture` cannot happen with capture=true; were it to, the
# money is only held, not taken, so the payment stays pending.
STATUSES = {"pending": "pending", "waiting_for_capture": "pending", "succeeded": "succeeded", "canceled": "canceled"}
HANDLED_EVENTS = {"payment.succeeded": "succeeded", "payment.canceled": "canceled"}
# YooKassa's ids are like 2419a771-000f-5000-9000-1edaf29243f2; anything else never reaches a URL path of ours.
PAYMENT_ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_-]{0,63}$")
MAX_DESCRIPTION_LENGTH = 128
MAX_EVENT_LENGTH = 64


@dataclass(frozen=True)
class _Settings:
    shop_id: str
    secret_key: str
    api_url: str
    timeout: float


class _UnusableAnswer(Exception):
    """The API answered 200 with something that is not a payment we can trust."""


class _UnexpectedAnswer(requests.RequestException):
    """An error status whose body is not YooKassa's error JSON (a proxy's HTML page, say)."""

    def __init__(self, status: int):
        super().__init__(f"HTTP {status} without YooKassa's error body")
        self.status = status


class _ApiClient(ApiClient):
    """The library's API client (Basic auth, headers, error classes) bound to one app's settings instead of the
    library's global `Configuration`, with a timeout on every request, no retries and no redirects."""

    def __init__(self, settings: _Settings):  # no super(): that reads the global Configuration
        self.settings = settings
        self.endpoint = settings.api_url.rstrip("/")
        self.shop_id = settings.shop_id
        self.shop_password = settings.secret_key
        self.auth_token = None
        self.user_agent = UserAgent()

    def request(self, method: str = "", path: str = "", query_params: Any = None, headers: Any = None,
                body: Any = None) -> Any:
        """As the library's, except that a transport failure stays a `requests` exception (the library's turns it
        into an AttributeError) and an error answer that is not YooKassa's JSON is an `_UnexpectedAnswer`."""
        if isinstance(body, RequestObject):
            body = dict(body)
        answer = self.execute(body, method, path, query_params, self.prepare_request_headers(headers))
        if answer.status_code != 200:
            try:
                self._ApiClient__handle_error(answer)  # raises the library's error class for the status
            except (ValueError, TypeError):  # not JSON, or not an object
                raise _UnexpectedAnswer(answer.status_code) from None
        return answer.json()

    def execute(self, body: Any, method: str, path: str, query_params: Any, request_headers: Any):
        # The library's execute logs headers (our Basic credentials) when a logger is configured; this never logs.
        with requests.Session() as session:
            return session.request(method, self.endpoint + path, params=query_params, headers=request_headers,
                                   json=body, allow_redirects=False,
                                   timeout=(min(CONNECT_TIMEOUT_SECONDS, self.settings.timeout),
                                            self.settings.timeout))


def _payments(settings: _Settings) -> type[yookassa.Payment]:
    """The library's `Payment` calls (create, find_one …) going through a client with these settings."""

    class BoundPayment(yookassa.Payment):
        def __init__(self) -> None:
            self.client = _ApiClient(settings)

    return BoundPayment


def _with_payment_id(return_url: str, payment_id: uuid.UUID) -> str:
    """The customer comes back to `return_url` with our payment id in the query, as from the mock checkout."""
    parts = urlsplit(return_url)
    added = urlencode({"payment_id": str(payment_id)})
    return urlunsplit(parts._replace(path=parts.path or "/", query=f"{parts.query}&{added}" if parts.query else added))


class YooKassaProvider(PaymentProvider):
    """RUB only: a YooKassa shop is paid out in its account currency, which for the shops YooKassa serves is the
    rouble; other currencies need a separate agreement with YooKassa, so we do not offer them."""

    name = "yookassa"
    currencies = ("RUB",)
    reconciles = True
    minimums = {"RUB": Decimal("1.00")}

    @property
    def _settings(self) -> _Settings:
        return _Settings(shop_id=str(self.config["YOOKASSA_SHOP_ID"]),
                         secret_key=str(self.config["YOOKASSA_SECRET_KEY"]),
                         api_url=self.config.get("YOOKASSA_API_URL") or DEFAULT_API_URL,
                         timeout=float(self.config["PAYMENT_PROVIDER_TIMEOUT"]))

    def create_checkout(self, payment: Payment, return_url: str | None) -> Checkout:
        # The library's request model checks the parameters (a bug of ours, not an outage, if it refuses them);
        # it carries the amount through float, exact for any amount below 10^13 with two decimals.
        params = PaymentRequest({
            "amount": {"value": format_amount(payment.amount), "currency": payment.currency},
            "capture": True,
            "confirmation": {"type": "redirect",
                             "return_url": _with_payment_id(return_url or self.config["FRONTEND_URL"], payment.id)},
            "description": f"Zenzefi top-up: {format_amount(payment.amount_znc)} ZNC"[:MAX_DESCRIPTION_LENGTH],
            "metadata": {"payment_id": str(payment.id)},
        })
        params.validate()
        try:
            # Our id as the key: a repeat of this call can never make a second YooKassa payment.
            created = _payments(self._settings).create(params, idempotency_key=str(payment.id))
        except (requests.RequestException, ApiError) as exc:
            raise self._unavailable("create", exc) from None
        except (ValueError, TypeError):  # the library could not read the answer as a payment
            created = None
        url = getattr(getattr(created, "confirmation", None), "confirmation_url", None)
        provider_payment_id = getattr(created, "id", None)
        if not isinstance(provider_payment_id, str) or not PAYMENT_ID.match(provider_payment_id) \
                or not isinstance(url, str) or urlsplit(url).scheme not in {"https", "http"}:
            log.error("yookassa create answered without a payment id or confirmation URL",
                      extra={"payment_id": str(payment.id)})
            raise ProviderUnavailable()
        return Checkout(provider_payment_id=provider_payment_id, payment_url=url)

    def verify_callback(self, raw_body: bytes, headers: Mapping[str, str], client_ip: str) -> ProviderVerdict | None:
        """Network (403), body (400), then the payment as the API says it is: unknown (404), not in the state the
        notification claims (422). What is left is the API's word; `settle` matches it against the payment."""
        if not self._from_yookassa(client_ip):
            raise CallbackRejected("network_not_allowed", "Notifications are accepted only from YooKassa's networks.",
                                   status=403)
        event, object_id = self._parse_notification(raw_body)
        if event not in HANDLED_EVENTS:
            return None
        try:
            fetched = self._get(object_id)
        except NotFoundError:
            raise CallbackRejected("unknown_payment", "YooKassa knows no such payment.", status=404) from None
        except _UnusableAnswer:
            raise CallbackRejected("unknown_payment", "YooKassa's answer names no payment of ours.",
                                   status=404) from None
        claimed = HANDLED_EVENTS[event]
        if fetched.status != claimed:
            # Both states are final, so a true notification always matches; the payment itself is left to
            # YooKassa's real notification or to reconciliation.
            raise CallbackRejected("not_paid_at_provider" if claimed == "succeeded" else "status_mismatch",
                                   f"YooKassa says the payment is {fetched.status}, not {claimed}.", status=422)
        # The state is final once succeeded or canceled, so one event per payment and state: a replay repeats it.
        return replace(fetched, event_id=f"yookassa:{fetched.provider_payment_id}:{claimed}", event_type=event)

    def fetch(self, payment: Payment) -> ProviderVerdict:
        """The API's word on one payment. One YooKassa does not know, or describes in a way we cannot trust,
        stays pending (an error for an operator) rather than stopping the reconciliation of all the others;
        it expires with the payment."""
        try:
            return self._get(payment.provider_payment_id)
        except (NotFoundError, _UnusableAnswer) as exc:
            log.error("yookassa has no usable answer about a payment", extra={
                "payment_id": str(payment.id), "provider_payment_id": payment.provider_payment_id,
                "error": type(exc).__name__})
            return ProviderVerdict(provider_payment_id=payment.provider_payment_id, status="pending",
                                   payment_id=payment.id)

    def _from_yookassa(self, client_ip: str | None) -> bool:
        try:
            address = ipaddress.ip_address(client_ip or "")
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in ipaddress.ip_network(network, strict=False)
                   for network in self.config["YOOKASSA_WEBHOOK_NETWORKS"])

    @staticmethod
    def _parse_notification(raw_body: bytes) -> tuple[str, str]:
        """`{"type": "notification", "event": "<name>", "object": {"id": "<YooKassa id>", …}}` or 400."""
        body = strict_json(raw_body)
        if not isinstance(body, dict) or body.get("type") != "notification":
            raise BadRequest('The notification must be a JSON object of type "notification".')
        event, obj = body.get("event"), body.get("object")
        if not isinstance(event, str) or not 0 < len(event) <= MAX_EVENT_LENGTH or not event.isprintable():
            raise BadRequest(f"`event` must be 1 to {MAX_EVENT_LENGTH} printable characters.")
        if not isinstance(obj, dict) or not isinstance(obj.get("id"), str) or not PAYMENT_ID.match(obj["id"]):
            raise BadRequest("`object.id` must be a YooKassa payment id.")
        return event, obj["id"]

    def _get(self, provider_payment_id: str | None) -> ProviderVerdict:
        """GET /payments/{id}; amounts read as the decimal strings YooKassa sends (the library's models go
        through float)."""
        if not isinstance(provider_payment_id, str) or not PAYMENT_ID.match(provider_payment_id):
            raise _UnusableAnswer()
        try:
            answer = _ApiClient(self._settings).request(HttpVerb.GET,
                                                        f"{yookassa.Payment.base_path}/{provider_payment_id}")
        except NotFoundError:
            raise
        except (requests.RequestException, ApiError) as exc:
            raise self._unavailable("fetch", exc) from None
        return self._verdict(answer, provider_payment_id)

    @staticmethod
    def _verdict(answer: Any, provider_payment_id: str) -> ProviderVerdict:
        if not isinstance(answer, dict) or answer.get("id") != provider_payment_id \
                or answer.get("status") not in STATUSES:
            raise _UnusableAnswer()
        amount, metadata = answer.get("amount"), answer.get("metadata")
        if not isinstance(amount, dict) or not isinstance(amount.get("value"), str) \
                or not isinstance(amount.get("currency"), str) or not isinstance(metadata, dict):
            raise _UnusableAnswer()
        try:
            value = Decimal(amount["value"])
            payment_id = uuid.UUID(metadata.get("payment_id"))
        except (InvalidOperation, TypeError, ValueError, AttributeError):
            raise _UnusableAnswer() from None
        if not value.is_finite():
            raise _UnusableAnswer()
        return ProviderVerdict(provider_payment_id=provider_payment_id, status=STATUSES[answer["status"]],
                               payment_id=payment_id, amount=value, currency=amount["currency"])

    @staticmethod
    def _unavailable(operation: str, exc: Exception) -> ProviderUnavailable:
        """503 for anything but an answer: unreachable, timed out, 5xx, 202 (still processing), 429 — and for a
        refusal of our request (wrong credentials or API URL, a request the shop does not take), logged as an
        error because an operator must act."""
        details = {"operation": operation, "error": type(exc).__name__,
                   "code": getattr(getattr(exc, "error", None), "code", None)}
        if isinstance(exc, BadRequestError | UnauthorizedError | ForbiddenError | NotFoundError | GoneError):
            log.error("yookassa refused the request", extra=details)
        else:
            log.warning("yookassa unavailable", extra=details)
        return ProviderUnavailable()
