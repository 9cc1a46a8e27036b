"""Outgoing webhooks end to end: an endpoint registered over HTTP with gunicorn (2 workers), a test ping sent by
a real `python -m worker` to a real receiver, correctly signed; with the receiver down the worker's attempt fails,
RQ's scheduler brings the retry back 10 s later, and it arrives — same `webhook-id` — once the receiver is up."""
from __future__ import annotations

import time

import pytest
from rq import Queue

from tests.e2e.harness import Gunicorn, Worker, real_services, wait_for
from tests.fixtures.webhooks import verify_signature

pytestmark = pytest.mark.e2e

ENDPOINTS = "/api/v1/webhooks/endpoints"


@real_services
def test_a_test_ping_is_delivered_signed_and_retried_until_the_receiver_is_back(services, receiver, redis_client):
    with Gunicorn(services.database_url, services.redis_url) as server, \
            Worker(services.database_url, services.redis_url) as worker:

        def logs() -> str:
            return f"{server.logs()}\n{worker.logs()}"

        headers = server.sign_up()["headers"]
        created = server.call("POST", ENDPOINTS, {"url": receiver.url(), "events": ["token.purchased"]}, headers)
        assert created.status == 201, created
        endpoint = created.json()
        deliveries_path = f"{ENDPOINTS}/{endpoint['id']}/deliveries"

        def delivery(delivery_id: str) -> dict:
            page = server.call("GET", deliveries_path, headers=headers)
            assert page.status == 200, page
            return next(item for item in page.json()["items"] if item["id"] == delivery_id)

        sent = server.call("POST", f"{ENDPOINTS}/{endpoint['id']}/test", headers=headers)
        assert sent.status == 202, sent
        ping = sent.json()
        wait_for(lambda: receiver.requests, 30, lambda: f"the worker never delivered the test ping\n{logs()}")
        (received,) = receiver.requests
        body = verify_signature(endpoint["secret"], received)
        assert (body["id"], body["type"]) == (ping["message_id"], "test.ping")
        assert received.headers["webhook-id"] == ping["message_id"]
        wait_for(lambda: delivery(ping["id"])["status"] == "succeeded", 10,
                 lambda: f"the delivery log never showed the success: {delivery(ping['id'])}\n{logs()}")
        assert delivery(ping["id"])["attempts"] == 1

        receiver.stop()
        sent = server.call("POST", f"{ENDPOINTS}/{endpoint['id']}/test", headers=headers)
        assert sent.status == 202, sent
        retried = sent.json()
        wait_for(lambda: delivery(retried["id"])["last_error"], 30,
                 lambda: f"the first attempt's failure was never recorded: {delivery(retried['id'])}\n{logs()}")
        failed_at = time.time()
        first = delivery(retried["id"])
        assert (first["status"], first["attempts"]) == ("pending", 1), first
        assert first["last_error"].startswith("cannot connect: "), first
        scheduled = Queue("webhooks", connection=redis_client).scheduled_job_registry
        wait_for(lambda: scheduled.count == 1, 5, lambda: f"the retry is not in RQ's scheduled registry\n{logs()}")

        receiver.start()  # the same port again
        wait_for(lambda: len(receiver.requests) == 2, 30,
                 lambda: f"the retry never arrived: {delivery(retried['id'])}\n{logs()}")
        assert time.time() - failed_at >= 8  # the retry waited for its 10 s, not sooner
        second = receiver.requests[1]
        assert second.headers["webhook-id"] == retried["message_id"]
        assert verify_signature(endpoint["secret"], second)["type"] == "test.ping"
        wait_for(lambda: delivery(retried["id"])["status"] == "succeeded", 10,
                 lambda: f"the retry's success was never recorded: {delivery(retried['id'])}\n{logs()}")
        assert delivery(retried["id"])["attempts"] == 2
        assert int(second.headers["webhook-timestamp"]) - int(received.headers["webhook-timestamp"]) >= 10
