"""Analytics schemas: what every figure means is written here, where OpenAPI shows it."""
from __future__ import annotations

from typing import Any

from marshmallow import ValidationError, fields, pre_load, validate

from ..schemas import BaseSchema, MoneyField
from .services import PERIOD_DAYS


def _described(description: str) -> dict:
    return {"metadata": {"description": description}}


def _count(description: str) -> fields.Integer:
    return fields.Integer(required=True, **_described(description))


def _money(description: str) -> MoneyField:
    return MoneyField(allow_negative=True, required=True, metadata={"description": description})


class PeriodQuerySchema(BaseSchema):
    """`?period=`; any other query parameter is a 422 (the routes load it with `unknown=RAISE`)."""

    period = fields.String(
        load_default="month", validate=validate.OneOf(list(PERIOD_DAYS)),
        metadata={"description": "Whole UTC calendar days ending today: `day` = today, `week` = the last 7 days, "
                                 "`month` = the last 30 days (today included). Default `month`.",
                  "enum": list(PERIOD_DAYS)},
    )

    @pre_load
    def one_period(self, data: Any, **kwargs: Any) -> Any:
        """`?period=day&period=month` is ambiguous: a 422, not whichever comes first."""
        if hasattr(data, "getlist") and len(data.getlist("period")) > 1:
            raise ValidationError({"period": ["Give one period."]})
        return data


class _Window(BaseSchema):
    period = fields.String(required=True, **_described("The period asked for."))
    start_time = fields.DateTime(required=True, **_described("00:00 UTC of the period's first day (included)."))
    end_time = fields.DateTime(required=True, **_described("00:00 UTC of the day after today (excluded)."))


class _Day(BaseSchema):
    date = fields.Date(required=True, **_described("The UTC calendar day."))


class UsageDaySchema(_Day):
    requests = _count("Proxied requests counted that day.")
    bytes = _count("`bytes_in` + `bytes_out`.")
    bytes_in = _count("Request body bytes sent upstream.")
    bytes_out = _count("Response body bytes sent back.")
    sessions = _count("Proxy sessions started that day.")
    spend_znc = _money("Net spend that day: tokens, bundles and plans bought, minus refunds (negative when the "
                       "refunds were larger).")


class UsageSchema(_Window):
    total_requests = _count(
        "Proxied requests in the period: every request that passed the proxy's checks and was forwarded (the "
        "proxy counts them in Redis; they reach these figures with the periodic flush, within about a minute).")
    total_bytes_transferred = _count(
        "Body bytes through the proxy in the period, both directions (`bytes_in` + `bytes_out`).")
    total_sessions = _count("Proxy sessions (one device's use of one token) started in the period.")
    active_sessions = _count(
        "Your proxy sessions open now: a device holds a token and has not been idle for `SESSION_IDLE_SECONDS`.")
    active_tokens = _count(
        "Your tokens usable now, as the proxy means it: not revoked and not expired (`ready` or `active`).")
    avg_session_duration_minutes = fields.Float(required=True, **_described(
        "Mean time from first to last request of the sessions started in the period (open ones so far), in "
        "minutes, two decimals; 0 without sessions. The idle wait before a session closes is not counted."))
    spend_znc = _money("Net spend in the period: tokens, bundles and plans bought, minus refunds received.")
    daily = fields.List(fields.Nested(UsageDaySchema), required=True, **_described(
        "One entry per UTC day of the period, oldest first, days without use included (zeros)."))


class GlobalDaySchema(_Day):
    new_users = _count("Users registered that day.")
    dau = _count("Users with at least one proxied request that day.")
    requests = _count("Proxied requests that day, all users.")
    bytes = _count("Body bytes through the proxy that day, both directions.")
    token_purchases = _count("Single tokens sold that day (purchases and auto-renewals).")
    bundle_purchases = _count("Bundles sold that day.")
    revenue_znc = _money("ZNC spent on tokens, bundles and plans that day (gross, before refunds).")
    refunds_znc = _money("ZNC refunded for revoked tokens that day.")
    deposits_znc = _money("ZNC credited by top-ups that day.")
    referral_bonuses_znc = _money("Referral bonuses credited that day.")
    referral_clawbacks_znc = _money("Referral bonuses taken back that day (refunds of qualifying purchases).")


class GlobalSchema(_Window):
    new_users = _count("Users registered in the period (deactivated ones too).")
    active_users = _count("Distinct users with at least one proxied request in the period.")
    dau = _count("Daily active users: distinct users with at least one proxied request today (UTC).")
    mau = _count(
        "Monthly active users: distinct users with at least one proxied request in the last 30 days, today "
        "included, whatever the period.")
    token_purchases = _count(
        "Single tokens sold in the period: `purchase` ledger entries of one token, auto-renewals included.")
    bundle_purchases = _count(
        "Bundles sold in the period: `purchase` ledger entries of a bundle (one per bundle, whatever its size).")
    revenue_znc = _money("Gross ZNC spent in the period on tokens, bundles and plans (`purchase` and `plan` "
                         "entries), before refunds: net revenue is `revenue_znc` − `refunds_znc`.")
    refunds_znc = _money("ZNC refunded in the period for revoked tokens (`refund` entries).")
    deposits_znc = _money("ZNC credited by top-ups in the period (`deposit` entries: provider payments and mock "
                          "purchases); admin adjustments are not included.")
    referral_bonuses_znc = _money("Referral bonuses credited in the period (`referral_bonus` entries, gross).")
    referral_clawbacks_znc = _money("Referral bonuses taken back in the period (`referral_clawback` entries).")
    total_proxy_requests = _count("Proxied requests in the period, all users.")
    total_bytes_transferred = _count("Body bytes through the proxy in the period, all users, both directions.")
    daily = fields.List(fields.Nested(GlobalDaySchema), required=True, **_described(
        "One entry per UTC day of the period, oldest first, zeros included."))
