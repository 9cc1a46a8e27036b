"""Business events end to end: gunicorn (2 workers) writes them to the outbox, a real `python -m worker` relays
them to a real webhook receiver and a real SMTP server — at once when all is up, and once it is back when the
worker or Redis was down. Nothing is lost."""
from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.e2e.harness import Gunicorn, Worker, real_services, wait_for
from tests.fixtures.webhooks import Receiver, verify_signature
from tests.support import SmtpSink

pytestmark = [pytest.mark.e2e, real_services]

ENDPOINTS = "/api/v1/webhooks/endpoints"
MOCK_PURCHASE = "/api/v1/currency/mock-purchase"
EVENTS = ["balance.topped_up", "token.purchased"]


def mail_env(smtp_sink: SmtpSink) -> dict[str, str]:
    return {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp_sink.port)}


def subscribe(server: Gunicorn, user: dict, receiver: Receiver) -> str:
    created = server.call("POST", ENDPOINTS, {"url": receiver.url(), "events": EVENTS}, user["headers"])
    assert created.status == 201, created
    return created.json()["secret"]


def top_up_and_buy(server: Gunicorn, user: dict) -> str:
    topped = server.call("POST", MOCK_PURCHASE, {"amount": "30"}, user["headers"])
    assert topped.status in (200, 201), topped
    bought = server.call("POST", "/api/v1/tokens/purchase", {"duration_hours": 1}, user["headers"])
    assert bought.status == 201, bought
    return bought.json()["id"]


def check_delivered(receiver: Receiver, smtp_sink: SmtpSink, secret: str, user: dict, token_id: str,
                    timeout: float, logs: Callable[[], str]) -> None:
    wait_for(lambda: len(receiver.requests) == 2 and smtp_sink.messages, timeout,
             lambda: f"got {len(receiver.requests)} webhooks, {len(smtp_sink.messages)} e-mails\n{logs()}", step=0.2)
    bodies = {body["type"]: body for body in (verify_signature(secret, received) for received in receiver.requests)}
    assert set(bodies) == set(EVENTS)
    assert bodies["token.purchased"]["data"]["token_id"] == token_id
    assert bodies["balance.topped_up"]["data"]["amount_znc"] == "30.00"
    [receipt] = smtp_sink.messages
    assert receipt["To"] == user["email"]
    assert receipt["Subject"] == "Receipt: 30.00 ZNC added to your balance"


def test_events_reach_webhooks_and_mail_at_once(services, receiver, smtp_sink):
    with Gunicorn(services.database_url, services.redis_url, extra_env=mail_env(smtp_sink)) as server, \
            Worker(services.database_url, services.redis_url, extra_env=mail_env(smtp_sink)) as worker:
        user = server.sign_up()
        secret = subscribe(server, user, receiver)
        token_id = top_up_and_buy(server, user)
        # Nudged by the commits: well before the next minute's relay run.
        check_delivered(receiver, smtp_sink, secret, user, token_id, 20, lambda: f"{server.logs()}\n{worker.logs()}")


def test_events_wait_for_a_worker_that_was_down(services, receiver, smtp_sink):
    with Gunicorn(services.database_url, services.redis_url, extra_env=mail_env(smtp_sink)) as server:
        user = server.sign_up()
        secret = subscribe(server, user, receiver)
        token_id = top_up_and_buy(server, user)
        assert receiver.requests == [] and smtp_sink.messages == []
        with Worker(services.database_url, services.redis_url, extra_env=mail_env(smtp_sink)) as worker:
            check_delivered(receiver, smtp_sink, secret, user, token_id, 20, worker.logs)


def test_events_written_while_redis_was_down_are_delivered_when_it_is_back(services, receiver, smtp_sink):
    relay = services.redis_relay()
    redis_url = services.redis_url_via(relay)
    with Gunicorn(services.database_url, redis_url, extra_env=mail_env(smtp_sink)) as server, \
            Worker(services.database_url, redis_url, extra_env=mail_env(smtp_sink)) as worker:
        user = server.sign_up()
        secret = subscribe(server, user, receiver)
        relay.stop()
        token_id = top_up_and_buy(server, user)  # committed, with its events, while Redis is unreachable
        assert receiver.requests == [] and smtp_sink.messages == []
        relay.start()
        # No nudge survived the outage: the scheduler's next minutely relay run picks the events up.
        check_delivered(receiver, smtp_sink, secret, user, token_id, 90, lambda: f"{server.logs()}\n{worker.logs()}")
