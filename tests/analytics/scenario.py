"""A hand-computed month: two customers and an admin, proxied traffic through the real local upstream on three
UTC days (the movable clock), deposits (a mock purchase and a mock-provider checkout), token, bundle and plan
purchases, a refund and a referral bonus — and every figure the analytics endpoints must show for it.

Days are relative to the real UTC today: D3 = three days ago, D1 = yesterday, D0 = today; `NOON` of D0 is when
the figures are read.

    D3 09:00  alice registers, mock-purchase deposit 100.00
    D3 10:00  alice buys a 1 h token (1.00) and a 24 h token (18.00); 3 requests with the 1 h token
              (GET, GET, POST of 250 bytes), each answered with 1000 bytes
    D3 10:30  1 more GET with it: her first session lasted 30 minutes
    D1 08:00  bob registers with alice's referral code, pays 500.00 through the mock checkout, buys a 720 h token
              (300.00): alice earns a referral bonus of 30.00
    D1 09:00  alice revokes her 24 h token, never used: refund 18.00
    D1 11:00  bob: 2 GETs; 11:15: 1 GET (a 15-minute session)
    D0 07:00  the admin registers
    D0 08:00  alice buys the premium plan (10.00)
    D0 09:00  alice buys a 24 h token (18.00) and the Starter Pack (81.00, 5 tokens); 2 GETs with the 24 h token
    D0 09:06  1 more GET (a 6-minute session)
"""
from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from tests.fixtures.proxy import ProxyEnv, Reply
from zenzefi_backend import clock

ANSWER = b"z" * 1000  # what the upstream answers to every request of the scenario
POSTED = b"p" * 250
DEVICE_ALICE = "device-alice-0001"
DEVICE_BOB = "device-bob-00002"


@contextlib.contextmanager
def at(moment: datetime) -> Iterator[None]:
    """Run the block with this process's clock at `moment` (it goes on ticking from there)."""
    with clock.travel(moment - datetime.now(UTC)):
        yield


@dataclass
class Scenario:
    today: date
    alice: dict[str, Any]
    bob: dict[str, Any]
    admin: dict[str, Any]
    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)

    def day(self, offset: int) -> date:
        return self.today - timedelta(days=offset)

    def when(self, offset: int, hour: int, minute: int = 0) -> datetime:
        return datetime.combine(self.day(offset), time(hour, minute), UTC)

    @property
    def noon(self) -> datetime:
        return self.when(0, 12)

    def dates(self, days: int) -> list[str]:
        return [self.day(offset).isoformat() for offset in range(days - 1, -1, -1)]


def _ok(response, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True)[:500])
    return response.get_json() if response.is_json else {}


def _use(env: ProxyEnv, token: dict, device: str, method: str = "GET", data: bytes | None = None) -> None:
    response = env.call(method, "certificates/filter", token=token, device=device, data=data)
    assert response.status_code == 200 and response.get_data() == ANSWER, response.get_data()[:200]


def _flush(env: ProxyEnv) -> None:
    env.send_pending_bytes_out()
    env.flush_counters()


def build(env: ProxyEnv) -> Scenario:
    """Play the scenario through the API and the proxy (see the module docstring)."""
    env.upstream.default = Reply(body=ANSWER)
    client = env.client
    today = datetime.now(UTC).date()
    when = Scenario(today, {}, {}, {}).when

    result = env.app.test_cli_runner().invoke(args=["bundles", "seed"])
    assert result.exit_code == 0, result.output
    starter = next(bundle for bundle in _ok(client.get("/api/v1/bundles"))["items"]
                   if bundle["name"] == "Starter Pack")

    with at(when(3, 9)):
        alice = env.accounts.signed_in(username=f"alice_{uuid.uuid4().hex[:8]}")
        _ok(client.post("/api/v1/currency/mock-purchase", headers=alice["headers"], json={"amount": "100.00"}), 201)
    scenario = Scenario(today, alice, {}, {})
    with at(when(3, 10)):
        scenario.tokens["alice_hour"] = env.buy(alice, duration_hours=1)
        scenario.tokens["alice_day"] = env.buy(alice, duration_hours=24)
        _use(env, scenario.tokens["alice_hour"], DEVICE_ALICE)
        _use(env, scenario.tokens["alice_hour"], DEVICE_ALICE)
        _use(env, scenario.tokens["alice_hour"], DEVICE_ALICE, "POST", POSTED)
    with at(when(3, 10, 30)):
        _use(env, scenario.tokens["alice_hour"], DEVICE_ALICE)
        _flush(env)

    with at(when(1, 8)):
        bob = env.accounts.signed_in(username=f"bob_{uuid.uuid4().hex[:8]}", referral_code=alice["referral_code"])
        payment = _ok(client.post("/api/v1/currency/purchase", headers=bob["headers"],
                                  json={"amount_znc": "500.00", "currency": "RUB"}), 201)
        _ok(client.post(f"/api/v1/payments/mock/{payment['payment_id']}/succeed"))
        scenario.tokens["bob_month"] = env.buy(bob, duration_hours=720)
    scenario.bob = bob
    with at(when(1, 9)):
        refund = _ok(env.revoke(scenario.tokens["alice_day"]))
        assert refund["refund_amount"] == "18.00", refund
    with at(when(1, 11)):
        _use(env, scenario.tokens["bob_month"], DEVICE_BOB)
        _use(env, scenario.tokens["bob_month"], DEVICE_BOB)
    with at(when(1, 11, 15)):
        _use(env, scenario.tokens["bob_month"], DEVICE_BOB)
        _flush(env)

    with at(when(0, 7)):
        scenario.admin = env.accounts.signed_in(superuser=True, username=f"admin_{uuid.uuid4().hex[:8]}")
    with at(when(0, 8)):
        _ok(client.post("/api/v1/users/me/plan", headers=alice["headers"], json={"plan": "premium"}))
    with at(when(0, 9)):
        scenario.tokens["alice_today"] = env.buy(alice, duration_hours=24)
        _ok(client.post(f"/api/v1/bundles/{starter['id']}/purchase", headers=alice["headers"]), 201)
        _use(env, scenario.tokens["alice_today"], DEVICE_ALICE)
        _use(env, scenario.tokens["alice_today"], DEVICE_ALICE)
    with at(when(0, 9, 6)):
        _use(env, scenario.tokens["alice_today"], DEVICE_ALICE)
        _flush(env)
    return scenario


def _day(date_: str, **figures: Any) -> dict[str, Any]:
    return {"date": date_, **figures}


def expected_usage(scenario: Scenario, who: str, period: str, *, sessions_open: int) -> dict[str, Any]:
    """Hand-computed: what `GET /analytics/usage?period=` must answer for alice or bob at D0 noon."""
    days = {"day": 1, "week": 7, "month": 30}[period]
    zero = {"requests": 0, "bytes": 0, "bytes_in": 0, "bytes_out": 0, "sessions": 0, "spend_znc": "0.00"}
    if who == "alice":
        busy = {
            3: {"requests": 4, "bytes": 4250, "bytes_in": 250, "bytes_out": 4000, "sessions": 1, "spend_znc": "19.00"},
            1: {**zero, "spend_znc": "-18.00"},
            0: {"requests": 3, "bytes": 3000, "bytes_in": 0, "bytes_out": 3000, "sessions": 1, "spend_znc": "109.00"},
        }
        # tokens usable at noon: today's 24 h token and the five Starter Pack tokens (ready)
        active_tokens = 6
    else:
        busy = {1: {"requests": 3, "bytes": 3000, "bytes_in": 0, "bytes_out": 3000, "sessions": 1,
                    "spend_znc": "300.00"}}
        active_tokens = 1
    daily = [_day(scenario.day(offset).isoformat(), **busy.get(offset, zero)) for offset in range(days - 1, -1, -1)]
    durations = {"alice": {3: 30.0, 0: 6.0}, "bob": {1: 15.0}}[who]
    in_period = [minutes for offset, minutes in durations.items() if offset < days]
    spend = sum(int(entry["spend_znc"].replace(".", "")) for entry in daily)
    return {
        "period": period,
        "start_time": f"{scenario.day(days - 1).isoformat()}T00:00:00+00:00",
        "end_time": f"{(scenario.today + timedelta(days=1)).isoformat()}T00:00:00+00:00",
        "total_requests": sum(entry["requests"] for entry in daily),
        "total_bytes_transferred": sum(entry["bytes"] for entry in daily),
        "total_sessions": sum(entry["sessions"] for entry in daily),
        "active_sessions": sessions_open,
        "active_tokens": active_tokens,
        "avg_session_duration_minutes": round(sum(in_period) / len(in_period), 2) if in_period else 0.0,
        "spend_znc": f"{spend / 100:.2f}",
        "daily": daily,
    }


def expected_global(scenario: Scenario, period: str) -> dict[str, Any]:
    """Hand-computed: what `GET /analytics/admin/global?period=` must answer at D0 noon."""
    days = {"day": 1, "week": 7, "month": 30}[period]
    zero = {"new_users": 0, "dau": 0, "requests": 0, "bytes": 0, "token_purchases": 0, "bundle_purchases": 0,
            "revenue_znc": "0.00", "refunds_znc": "0.00", "deposits_znc": "0.00", "referral_bonuses_znc": "0.00",
            "referral_clawbacks_znc": "0.00"}
    busy = {
        3: {**zero, "new_users": 1, "dau": 1, "requests": 4, "bytes": 4250, "token_purchases": 2,
            "revenue_znc": "19.00", "deposits_znc": "100.00"},
        1: {**zero, "new_users": 1, "dau": 1, "requests": 3, "bytes": 3000, "token_purchases": 1,
            "revenue_znc": "300.00", "refunds_znc": "18.00", "deposits_znc": "500.00",
            "referral_bonuses_znc": "30.00"},
        0: {**zero, "new_users": 1, "dau": 1, "requests": 3, "bytes": 3000, "token_purchases": 1,
            "bundle_purchases": 1, "revenue_znc": "109.00"},
    }
    daily = [_day(scenario.day(offset).isoformat(), **busy.get(offset, zero)) for offset in range(days - 1, -1, -1)]

    def total(name: str) -> Any:
        values = [entry[name] for entry in daily]
        if isinstance(values[0], str):
            return f"{sum(int(value.replace('.', '')) for value in values) / 100:.2f}"
        return sum(values)

    active = {"day": 1, "week": 2, "month": 2}[period]
    return {
        "period": period,
        "start_time": f"{scenario.day(days - 1).isoformat()}T00:00:00+00:00",
        "end_time": f"{(scenario.today + timedelta(days=1)).isoformat()}T00:00:00+00:00",
        **{name: total(name) for name in ("new_users", "token_purchases", "bundle_purchases", "revenue_znc",
                                           "refunds_znc", "deposits_znc", "referral_bonuses_znc",
                                           "referral_clawbacks_znc")},
        "active_users": active,
        "dau": 1,
        "mau": 2,
        "total_proxy_requests": total("requests"),
        "total_bytes_transferred": total("bytes"),
        "daily": daily,
    }
