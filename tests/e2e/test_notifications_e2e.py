"""Business events end to end: gunicorn (2 workers) writes them to the outbox, a real `python -m worker` relays
them to a real webhook receiver and a real SMTP server — at once when all is up, and once it is back when the
worker or Redis was down. Nothing is lost."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.harness import Gunicorn, Worker, real_services, wait_for
from tests.notifications.conftest import Receiver, verify_signature
from tests.support import SmtpSink

pytestmark = [pytest.mark.e2e, real_services]

ENDPOINTS = "/api/v1/webhooks/endpoints"
MOCK_PURCHASE = "/api/v1/currency/mock-purchase"
EVENTS = ["balance.topped_up", "token.purchased"]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver().start()
    yield found
    found.stop()


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    with SmtpSink() as sink:
        yield sink


def mail_env(smtp: SmtpSink) -> dict[str, str]:
    return {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp.port)}


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


def check_delivered(receiver: Receiver, smtp: SmtpSink, secret: str, user: dict, token_id: str) -> None:
    bodies = {body["type"]: body for body in (verify_signature(secret, received) for received in receiver.requests)}
    assert set(bodies) == set(EVENTS)
    assert bodies["token.purchased"]["data"]["token_id"] == token_id
    assert bodies["balance.topped_up"]["data"]["amount_znc"] == "30.00"
    [receipt] = smtp.messages
    assert receipt["To"] == user["email"]
    assert receipt["Subject"] == "Receipt: 30.00 ZNC added to your balance"


def test_events_reach_webhooks_and_mail_at_once(services, receiver, smtp):
    with Gunicorn(services.database_url, services.redis_url, extra_env=mail_env(smtp)) as server, \
            Worker(services.database_url, services.redis_url, extra_env=mail_env(smtp)) as worker:
        user = server.sign_up()
        secret = subscribe(server, user, receiver)
        token_id = top_up_and_buy(server, user)
        # Nudged by the commits: well before the next minute's relay run.
        wait_for(lambda: len(receiver.requests) == 2 and smtp.messages, 20,
                 lambda: f"got {len(receiver.requests)} webhooks, {len(smtp.messages)} e-mails\n"
                         f"{server.logs()}\n{worker.logs()}")
        check_delivered(receiver, smtp, secret, user, token_id)


def test_events_wait_for_a_worker_that_was_down(services, receiver, smtp):
    with Gunicorn(services.database_url, services.redis_url, extra_env=mail_env(smtp)) as server:
        user = server.sign_up()
        secret = subscribe(server, user, receiver)
        token_id = top_up_and_buy(server, user)
        assert receiver.requests == [] and smtp.messages == []
        with Worker(services.database_url, services.redis_url, extra_env=mail_env(smtp)) as worker:
            wait_for(lambda: len(receiver.requests) == 2 and smtp.messages, 20,
                     lambda: f"got {len(receiver.requests)} webhooks, {len(smtp.messages)} e-mails\n{worker.logs()}")
        check_delivered(receiver, smtp, secret, user, token_id)


def test_events_written_while_redis_was_down_are_delivered_when_it_is_back(services, receiver, smtp):
    relay = services.redis_relay()
    redis_url = services.redis_url_via(relay)
    with Gunicorn(services.database_url, redis_url, extra_env=mail_env(smtp)) as server, \
            Worker(services.database_url, redis_url, extra_env=mail_env(smtp)) as worker:
        user = server.sign_up()
        secret = subscribe(server, user, receiver)
        relay.stop()
        token_id = top_up_and_buy(server, user)  # committed, with its events, while Redis is unreachable
        relay.start()
        # No nudge survived the outage: the scheduler's next minutely relay run picks the events up.
        wait_for(lambda: len(receiver.requests) == 2 and smtp.messages, 90,
                 lambda: f"got {len(receiver.requests)} webhooks, {len(smtp.messages)} e-mails\n"
                         f"{server.logs()}\n{worker.logs()}", step=0.5)
        check_delivered(receiver, smtp, secret, user, token_id)
