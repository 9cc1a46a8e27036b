"""Webhook delivery against a real HTTP receiver on 127.0.0.1: Standard Webhooks signing, retries with the same
`webhook-id` on the schedule (the clock moves, nothing sleeps), redirects and timeouts as failures, 410 and ten
failed deliveries disabling the endpoint, at most one sender per attempt, the metrics, fan-out and retention."""
from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
import standardwebhooks.webhooks
from prometheus_client import REGISTRY
from rq import Queue, SimpleWorker

from tests.admin.helpers import audit_rows
from tests.fixtures.webhooks import Received, verify_signature
from tests.support import POSTGRES_ONLY_REASON, dead_redis
from zenzefi_backend.clock import now
from zenzefi_backend.extensions import db, get_redis, redis_connection
from zenzefi_backend.notifications import webhooks
from zenzefi_backend.notifications.models import OutboxEvent, WebhookDelivery, WebhookEndpoint
from zenzefi_backend.notifications.webhooks import deliver, due_deliveries, fan_out, purge_delivery_log, sign

ENDPOINTS = "/api/v1/webhooks/endpoints"
SCHEDULE = [10, 60, 300, 1800, 7200, 21600]


@pytest.fixture
def user(accounts) -> dict:
    return accounts.signed_in()


def register(client, user, url: str, events=("token.purchased",)) -> dict:
    response = client.post(ENDPOINTS, json={"url": url, "events": list(events)}, headers=user["headers"])
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def publish(user: dict, event_type: str = "token.purchased", **data) -> list[uuid.UUID]:
    """An outbox event of the user's, fanned out and committed as the relay does; the deliveries it made."""
    event = OutboxEvent(id=uuid.uuid4(), event_type=event_type, user_id=uuid.UUID(user["id"]),
                        payload=data or {"token_id": str(uuid.uuid4())}, created_at=now())
    db.session.add(event)
    fan_out(event)
    db.session.commit()
    return list(db.session.scalars(sa.select(WebhookDelivery.id)
                                   .where(WebhookDelivery.message_id == f"msg_{event.id.hex}")))


def delivery(delivery_id: uuid.UUID) -> WebhookDelivery:
    db.session.expire_all()
    return db.session.get(WebhookDelivery, delivery_id)


def endpoint_row(endpoint_id: str) -> WebhookEndpoint:
    db.session.expire_all()
    return db.session.get(WebhookEndpoint, uuid.UUID(endpoint_id))


def attempts_counted(result: str) -> float:
    return REGISTRY.get_sample_value("webhook_deliveries_total", {"result": result}) or 0.0


def run_until_finished(delivery_ids: list[uuid.UUID], timeline) -> None:
    """Attempt every delivery each time its retry comes due, moving the clock, until none is pending."""
    for _ in range(webhooks.MAX_ATTEMPTS + 1):
        pending = [row for row in map(delivery, delivery_ids) if row.status == "pending"]
        if not pending:
            return
        timeline.reach(max(row.next_attempt_at for row in pending))
        for row in pending:
            deliver(row.id)
    pytest.fail("deliveries still pending after every attempt")


def test_a_delivery_is_signed_as_standard_webhooks_says(app_ctx, client, user, receiver):
    endpoint = register(client, user, receiver.url())
    (delivery_id,) = publish(user, token_id="9b2f", paid_znc="1.00", note="ünïcode")
    before = int(now().timestamp())
    assert deliver(delivery_id) == "succeeded"

    (request,) = receiver.wait_for(1)
    row = delivery(delivery_id)
    assert (request.method, request.path) == ("POST", "/hooks")
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith("Zenzefi-Webhooks/")
    assert request.headers["webhook-id"] == row.message_id
    assert before <= int(request.headers["webhook-timestamp"]) <= int(now().timestamp())
    body = verify_signature(endpoint["secret"], request)
    # The bytes signed are the bytes sent: the stored message, serialised once, compact.
    assert request.body == json.dumps(row.payload, separators=(",", ":")).encode()
    assert body == {"id": row.message_id, "type": "token.purchased", "created_at": body["created_at"],
                    "data": {"token_id": "9b2f", "paid_znc": "1.00", "note": "ünïcode"}}
    assert datetime.fromisoformat(body["created_at"]).utcoffset() == timedelta(0)
    assert body["created_at"].endswith("+00:00")
    assert endpoint["secret"] not in str(request.headers)
    assert (row.status, row.attempts, row.response_status, row.last_error) == ("succeeded", 1, 204, None)
    assert row.completed_at is not None and row.last_attempt_at is not None


def test_the_signature_matches_the_published_standard_webhooks_vector(monkeypatch):
    secret, message_id, timestamp, body = ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek",
                                           1614265330, b'{"test": 2432232314}')
    assert sign(secret, message_id, timestamp, body) == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

    class AtTheVectorsTime(datetime):  # the library's clock, at the moment the vector was signed
        @classmethod
        def now(cls, tz=None):
            return datetime.fromtimestamp(timestamp, tz)

    monkeypatch.setattr(standardwebhooks.webhooks, "datetime", AtTheVectorsTime)
    headers = {"webhook-id": message_id, "webhook-timestamp": str(timestamp),
               "webhook-signature": "v1,bm9wZQ== v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="}
    # The verifier the tests (and receivers) use agrees with the reference, and refuses a changed body or id.
    assert verify_signature(secret, Received("POST", "/", headers, body)) == {"test": 2432232314}
    with pytest.raises(AssertionError, match="does not verify"):
        verify_signature(secret, Received("POST", "/", headers, b'{"test": 2432232315}'))
    with pytest.raises(AssertionError, match="does not verify"):
        verify_signature(secret, Received("POST", "/", {**headers, "webhook-id": "msg_other"}, body))


def test_retries_keep_the_webhook_id_with_a_fresh_timestamp_and_signature(app_ctx, client, user, receiver,
                                                                          timeline):
    endpoint = register(client, user, receiver.url())
    (delivery_id,) = publish(user)
    receiver.answer(500, 503)
    assert deliver(delivery_id) == "failed (HTTP 500); retry in 10 s"
    assert deliver(delivery_id) == "nothing to do: not due yet, or another worker is attempting it"
    assert len(receiver.requests) == 1
    timeline.reach(delivery(delivery_id).next_attempt_at)
    assert deliver(delivery_id) == "failed (HTTP 503); retry in 60 s"
    timeline.reach(delivery(delivery_id).next_attempt_at)
    assert deliver(delivery_id) == "succeeded"

    requests = receiver.wait_for(3)
    assert len({request.headers["webhook-id"] for request in requests}) == 1
    assert len({request.body for request in requests}) == 1
    stamps = [int(request.headers["webhook-timestamp"]) for request in requests]
    assert stamps[1] - stamps[0] >= 10 and stamps[2] - stamps[1] >= 60, stamps
    assert len({request.headers["webhook-signature"] for request in requests}) == 3
    for request in requests:
        verify_signature(endpoint["secret"], request)
    row = delivery(delivery_id)
    assert (row.status, row.attempts, row.response_status, row.last_error) == ("succeeded", 3, 204, None)
    assert endpoint_row(endpoint["id"]).consecutive_failures == 0


def test_retries_follow_the_schedule_then_the_delivery_fails(app_ctx, client, user, receiver, timeline):
    endpoint = register(client, user, receiver.url())
    (delivery_id,) = publish(user)
    receiver.answer(*[500] * 7)
    gaps = []
    for _ in range(7):
        outcome = deliver(delivery_id)
        row = delivery(delivery_id)
        if row.status == "pending":
            gaps.append((row.next_attempt_at - row.last_attempt_at).total_seconds())
            timeline.reach(row.next_attempt_at)
    assert [abs(gap - expected) < 2 for gap, expected in zip(gaps, SCHEDULE, strict=True)] == [True] * 6, gaps
    assert outcome == "failed for good (HTTP 500)"
    assert (row.status, row.attempts, row.response_status) == ("failed", 7, 500)
    assert row.completed_at is not None
    assert len(receiver.requests) == 7
    timeline.advance(timedelta(days=1))
    assert deliver(delivery_id) == "nothing to do: already failed"
    assert len(receiver.requests) == 7
    assert endpoint_row(endpoint["id"]).consecutive_failures == 1  # one failed delivery, not seven


def test_a_redirect_is_not_followed_and_counts_as_a_failure(app_ctx, client, user, receiver):
    register(client, user, receiver.url())
    (delivery_id,) = publish(user)
    receiver.answer(302)
    assert deliver(delivery_id) == "failed (HTTP 302); retry in 10 s"
    # Had the redirect been followed, that request would have arrived before deliver() returned.
    assert [(request.method, request.path) for request in receiver.requests] == [("POST", "/hooks")]
    row = delivery(delivery_id)
    assert (row.status, row.response_status, row.last_error) == ("pending", 302, "HTTP 302")


def test_no_answer_within_the_timeout_is_a_failure(app_ctx, client, user, receiver, monkeypatch):
    monkeypatch.setattr(webhooks, "TIMEOUT_SECONDS", 0.5)  # SPEC: 10 s; lowered so the test does not wait
    register(client, user, receiver.url())
    (delivery_id,) = publish(user)
    receiver.hold.set()
    started = time.monotonic()
    outcome = deliver(delivery_id)
    elapsed = time.monotonic() - started
    receiver.hold.clear()
    assert outcome == "failed (no answer within 0.5 s); retry in 10 s"
    assert 0.4 < elapsed < 3, elapsed
    row = delivery(delivery_id)
    assert (row.status, row.response_status, row.last_error) == ("pending", None, "no answer within 0.5 s")


def test_a_receiver_that_is_down_is_a_failure(app_ctx, client, user, receiver):
    register(client, user, receiver.url())
    (delivery_id,) = publish(user)
    receiver.stop()
    outcome = deliver(delivery_id)
    assert outcome.startswith("failed (cannot connect: ") and outcome.endswith("retry in 10 s"), outcome
    assert delivery(delivery_id).last_error.startswith("cannot connect: ")


def test_the_default_timeout_is_ten_seconds():
    assert webhooks.TIMEOUT_SECONDS == 10
    assert webhooks.LEASE > timedelta(seconds=webhooks.JOB_TIMEOUT_SECONDS) > timedelta(seconds=10)


def test_410_disables_the_endpoint_and_its_pending_deliveries_are_not_sent(app, app_ctx, client, user, receiver):
    endpoint = register(client, user, receiver.url())
    first, = publish(user)
    second, = publish(user)
    receiver.answer(410)
    gone = attempts_counted("gone")
    assert deliver(first) == "failed: 410 Gone, endpoint disabled"
    assert attempts_counted("gone") == gone + 1
    disabled = endpoint_row(endpoint["id"])
    assert (disabled.is_active, disabled.disabled_reason) == (False, "gone") and disabled.disabled_at is not None
    assert (delivery(first).status, delivery(first).response_status) == ("failed", 410)

    assert deliver(second) == "not sent: endpoint disabled"
    row = delivery(second)
    assert (row.status, row.attempts, row.last_error) == ("failed", 0, "endpoint disabled")
    assert len(receiver.requests) == 1
    assert publish(user) == []  # a disabled endpoint gets no new deliveries
    (audited,) = audit_rows(app, "webhook_endpoint.disabled")
    assert (audited["actor_id"], audited["resource_id"], audited["details"]) == (
        None, endpoint["id"], {"reason": "gone"})
    shown = client.get(f"{ENDPOINTS}/{endpoint['id']}", headers=user["headers"]).get_json()
    assert (shown["is_active"], shown["disabled_reason"]) == (False, "gone")


def test_ten_failed_deliveries_in_a_row_disable_the_endpoint_and_a_success_resets_the_count(
        app, app_ctx, client, user, receiver, timeline):
    endpoint = register(client, user, receiver.url())
    receiver.answer(*[500] * (9 * 7))
    nine = [delivery_id for _ in range(9) for delivery_id in publish(user)]
    run_until_finished(nine, timeline)
    assert {delivery(delivery_id).status for delivery_id in nine} == {"failed"}
    assert endpoint_row(endpoint["id"]).consecutive_failures == 9
    assert endpoint_row(endpoint["id"]).is_active

    (recovering,) = publish(user)
    assert deliver(recovering) == "succeeded"
    assert endpoint_row(endpoint["id"]).consecutive_failures == 0

    receiver.answer(*[500] * (10 * 7))
    ten = [delivery_id for _ in range(10) for delivery_id in publish(user)]
    failed = attempts_counted("failed")
    run_until_finished(ten, timeline)
    assert attempts_counted("failed") == failed + 10
    disabled = endpoint_row(endpoint["id"])
    assert (disabled.is_active, disabled.disabled_reason, disabled.consecutive_failures) == (False, "failing", 10)
    (audited,) = audit_rows(app, "webhook_endpoint.disabled")
    assert audited["details"] == {"reason": "failing", "consecutive_failures": 10}

    enabled = client.patch(f"{ENDPOINTS}/{endpoint['id']}", json={"is_active": True}, headers=user["headers"])
    assert enabled.get_json()["consecutive_failures"] == 0 and enabled.get_json()["is_active"] is True


def test_each_attempt_is_counted_by_result(app_ctx, client, user, receiver, timeline):
    register(client, user, receiver.url())
    before = {result: attempts_counted(result) for result in ("success", "retry", "failed", "gone")}
    (delivery_id,) = publish(user)
    receiver.answer(500)
    deliver(delivery_id)
    timeline.reach(delivery(delivery_id).next_attempt_at)
    deliver(delivery_id)
    (last_chance,) = publish(user)
    db.session.execute(sa.update(WebhookDelivery).where(WebhookDelivery.id == last_chance).values(attempts=6))
    db.session.commit()
    receiver.answer(503)
    assert deliver(last_chance) == "failed for good (HTTP 503)"
    deliver(uuid.uuid4())  # nothing to do: not an attempt
    after = {result: attempts_counted(result) for result in before}
    assert {result: after[result] - before[result] for result in before} == {
        "success": 1, "retry": 1, "failed": 1, "gone": 0}


def test_a_deleted_endpoint_or_an_unknown_delivery_is_nothing_to_do(app_ctx, client, user, receiver):
    endpoint = register(client, user, receiver.url())
    (delivery_id,) = publish(user)
    assert client.delete(f"{ENDPOINTS}/{endpoint['id']}", headers=user["headers"]).status_code == 204
    assert deliver(delivery_id) == "nothing to do: no such delivery (its endpoint was deleted, or it was purged)"
    assert receiver.requests == []


def test_a_paused_endpoint_s_deliveries_are_not_sent(app_ctx, client, user, receiver):
    endpoint = register(client, user, receiver.url())
    (delivery_id,) = publish(user)
    client.patch(f"{ENDPOINTS}/{endpoint['id']}", json={"is_active": False}, headers=user["headers"])
    assert deliver(delivery_id) == "not sent: endpoint disabled"
    assert receiver.requests == []


def test_a_worker_that_died_mid_attempt_only_delays_the_delivery(app_ctx, client, user, receiver, timeline):
    register(client, user, receiver.url())
    (delivery_id,) = publish(user)
    # What a claim leaves behind when its worker dies before the answer is written down.
    db.session.execute(sa.update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(
        attempts=1, last_attempt_at=now(), next_attempt_at=now() + webhooks.LEASE))
    db.session.commit()
    assert deliver(delivery_id) == "nothing to do: not due yet, or another worker is attempting it"
    assert delivery_id not in due_deliveries(now())
    timeline.advance(webhooks.LEASE)
    assert delivery_id in due_deliveries(now())
    assert deliver(delivery_id) == "succeeded"
    assert delivery(delivery_id).attempts == 2 and len(receiver.requests) == 1


def test_a_last_attempt_that_never_answered_fails_the_delivery(app_ctx, client, user, receiver, timeline):
    endpoint = register(client, user, receiver.url())
    (delivery_id,) = publish(user)
    db.session.execute(sa.update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(
        attempts=webhooks.MAX_ATTEMPTS, next_attempt_at=now() + webhooks.LEASE))
    db.session.commit()
    timeline.advance(webhooks.LEASE)
    assert deliver(delivery_id) == "failed: the last attempt never reported an answer"
    assert delivery(delivery_id).status == "failed" and receiver.requests == []
    assert endpoint_row(endpoint["id"]).consecutive_failures == 1


def test_a_late_answer_after_the_lease_ran_out_is_discarded(app, app_ctx, client, user, receiver, timeline):
    register(client, user, receiver.url())
    (delivery_id,) = publish(user)
    outcomes: dict[str, str] = {}

    def attempt(name: str) -> None:
        with app.app_context():
            try:
                outcomes[name] = deliver(delivery_id)
            finally:
                db.session.remove()

    receiver.hold.set()
    slow = threading.Thread(target=attempt, args=("slow",))
    slow.start()
    receiver.wait_for(1)
    timeline.advance(webhooks.LEASE + timedelta(seconds=1))  # the slow worker's lease runs out
    fresh = threading.Thread(target=attempt, args=("fresh",))
    fresh.start()
    receiver.wait_for(2)
    receiver.hold.clear()
    slow.join(10)
    fresh.join(10)
    assert outcomes == {
        "slow": "answer discarded: the delivery changed meanwhile (its lease ran out, or it was deleted)",
        "fresh": "succeeded"}
    row = delivery(delivery_id)
    assert (row.status, row.attempts) == ("succeeded", 2)


@pytest.mark.postgres
def test_workers_racing_for_one_delivery_send_it_once(app, backends, client, user, receiver):
    if not backends.is_postgres:
        pytest.skip(POSTGRES_ONLY_REASON)
    from tests.fixtures.race import race_in_app_contexts

    with app.app_context():
        register(client, user, receiver.url())
    for round_number in range(5):
        with app.app_context():
            (delivery_id,) = publish(user)
        outcomes = race_in_app_contexts(app, lambda delivery_id=delivery_id: deliver(delivery_id), threads=8)
        assert sorted(outcomes).count("succeeded") == 1, outcomes
        assert all(outcome.startswith("nothing to do") for outcome in outcomes if outcome != "succeeded"), outcomes
        assert len(receiver.requests) == round_number + 1
    with app.app_context():
        assert {row.attempts for row in db.session.scalars(sa.select(WebhookDelivery))} == {1}


def test_fan_out_reaches_the_active_subscribed_endpoints_of_the_user_once(app_ctx, client, accounts, user):
    wanted = register(client, user, "http://127.0.0.1:8080/a", events=["token.purchased", "balance.low"])
    register(client, user, "http://127.0.0.1:8080/b", events=["balance.low"])
    paused = register(client, user, "http://127.0.0.1:8080/c", events=["token.purchased"])
    client.patch(f"{ENDPOINTS}/{paused['id']}", json={"is_active": False}, headers=user["headers"])
    register(client, accounts.signed_in(), "http://127.0.0.1:8080/d", events=["token.purchased"])

    event = OutboxEvent(id=uuid.uuid4(), event_type="token.purchased", user_id=uuid.UUID(user["id"]),
                        payload={"token_id": "t"}, created_at=now())
    db.session.add(event)
    assert fan_out(event) == 1
    assert fan_out(event) == 0  # a second relay of the same event adds nothing, and does not fail
    db.session.commit()
    assert fan_out(event) == 0
    db.session.commit()
    (row,) = db.session.scalars(sa.select(WebhookDelivery))
    assert str(row.endpoint_id) == wanted["id"]
    assert (row.message_id, row.event_type, row.status, row.attempts) == (
        f"msg_{event.id.hex}", "token.purchased", "pending", 0)
    assert row.payload == {"id": row.message_id, "type": "token.purchased",
                           "created_at": event.created_at.isoformat(), "data": {"token_id": "t"}}
    assert fan_out(OutboxEvent(id=uuid.uuid4(), event_type="token.purchased", user_id=None, payload={},
                               created_at=now())) == 0


def test_due_deliveries_are_the_pending_ones_whose_time_has_come(app_ctx, client, user, receiver):
    register(client, user, receiver.url())
    done, waiting, due = publish(user)[0], publish(user)[0], publish(user)[0]
    deliver(done)
    db.session.execute(sa.update(WebhookDelivery).where(WebhookDelivery.id == waiting)
                       .values(next_attempt_at=now() + timedelta(minutes=1)))
    db.session.commit()
    assert due_deliveries(now()) == [due]
    assert set(due_deliveries(now() + timedelta(minutes=2))) == {waiting, due}
    assert len(due_deliveries(now() + timedelta(minutes=2), limit=1)) == 1


def test_the_delivery_log_forgets_finished_deliveries_after_the_retention(app_ctx, client, user, receiver,
                                                                          timeline):
    register(client, user, receiver.url())
    old_success, old_failure, still_pending = publish(user)[0], publish(user)[0], publish(user)[0]
    deliver(old_success)
    receiver.answer(410)
    deliver(old_failure)  # fails (and disables the endpoint)
    timeline.advance(timedelta(days=31))
    recent = publish(user)  # none: the endpoint is disabled now
    assert recent == []
    assert purge_delivery_log(now() - timedelta(days=30)) == 2
    assert list(db.session.scalars(sa.select(WebhookDelivery.id))) == [still_pending]
    assert purge_delivery_log(now() - timedelta(days=30)) == 0


def test_a_failed_attempt_puts_its_retry_on_the_webhooks_queue(app, app_ctx, client, user, receiver, timeline):
    if app.config["EMBEDDED"]:
        pytest.skip("the embedded default has no scheduler for delayed jobs; the relay re-enqueues due rows")
    register(client, user, receiver.url())
    (delivery_id,) = publish(user)
    receiver.answer(500)
    assert deliver(delivery_id) == "failed (HTTP 500); retry in 10 s"
    due = delivery(delivery_id).next_attempt_at
    queue = Queue("webhooks", connection=get_redis())
    registry = queue.scheduled_job_registry
    (job_id,) = registry.get_job_ids()
    job = queue.fetch_job(job_id)
    assert (job.func_name, job.args) == ("zenzefi_backend.jobs.webhooks.deliver_webhook_job", (str(delivery_id),))
    # RQ keeps whole seconds: the job is set a little late, never before the row is due (it would find nothing).
    assert timedelta(0) <= registry.get_scheduled_time(job) - due <= timedelta(seconds=2)
    registry.remove(job)  # its time has come: what RQ's scheduler does then
    queue.enqueue_job(job)
    timeline.reach(delivery(delivery_id).next_attempt_at)
    SimpleWorker([queue], connection=get_redis()).work(burst=True)
    assert len(receiver.wait_for(2)) == 2
    assert delivery(delivery_id).status == "succeeded"


def test_enqueueing_runs_the_attempt_inline_in_the_embedded_default(app, app_ctx, client, user, receiver):
    if not app.config["EMBEDDED"]:
        pytest.skip("with Redis a worker runs the job (see the test ping and the e2e test)")
    register(client, user, receiver.url())
    (delivery_id,) = publish(user)
    webhooks.enqueue_delivery(delivery_id)
    assert len(receiver.wait_for(1)) == 1 and delivery(delivery_id).status == "succeeded"


def test_a_redis_outage_leaves_the_delivery_pending_for_the_relay(app, app_ctx, client, user, receiver, monkeypatch):
    register(client, user, receiver.url())
    (delivery_id,) = publish(user)
    monkeypatch.setitem(app.extensions, redis_connection.extension_key, dead_redis())
    webhooks.enqueue_delivery(delivery_id)  # logged, not raised
    assert receiver.requests == []
    assert delivery(delivery_id).status == "pending"
    assert due_deliveries(now()) == [delivery_id]
