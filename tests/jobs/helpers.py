"""Shared by the sweep tests: tokens in every state, proxy sessions and cache entries."""
from __future__ import annotations

import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from flask import Flask

from tests.fixtures.actions import buy_token
from zenzefi_backend.clock import now
from zenzefi_backend.extensions import db, get_redis
from zenzefi_backend.notifications.models import OutboxEvent
from zenzefi_backend.proxy.cache import HOLDER_KEY, TOKEN_KEY
from zenzefi_backend.proxy.models import ProxySession
from zenzefi_backend.tokens.models import AccessToken, hash_secret


def buy_tokens(client, accounts, count: int) -> list[dict[str, Any]]:
    """`count` one-hour tokens of one new user, bought through the API (id and secret of each)."""
    user = accounts.signed_in()
    accounts.fund(user["id"], str(count))
    bought = []
    for _ in range(count):
        body = buy_token(client, user)
        bought.append({"id": body["id"], "secret": body["token"], "user_id": user["id"]})
    return bought


def activate(app: Flask, token: dict[str, Any], ago: timedelta, *, session: bool = True, cached: bool = True,
             revoked: bool = False) -> None:
    """Make the token activated `ago` (so a one-hour token past 1 h has expired), in use by a device, cached."""
    token_id = uuid.UUID(token["id"])
    with app.app_context():
        activated = now() - ago
        values: dict[str, Any] = {"activated_at": activated, "expires_at": activated + timedelta(hours=1)}
        if revoked:
            values["revoked_at"] = now()
        db.session.execute(sa.update(AccessToken).where(AccessToken.id == token_id).values(**values))
        if session:
            db.session.add(ProxySession(
                id=uuid.uuid4(), token_id=token_id, user_id=uuid.UUID(token["user_id"]), device_id="device-1",
                started_at=activated, last_activity=activated, request_count=1, bytes_in=0, bytes_out=0,
                is_active=True,
            ))
        db.session.commit()
        if cached:
            client = get_redis()
            client.set(TOKEN_KEY + hash_secret(token["secret"]), '{"cached": true}', ex=300)
            client.set(HOLDER_KEY + token["id"], "device-1\nsession", ex=300)


def events(app: Flask, event_type: str, key: str | tuple[str, ...] = "token_id") -> Counter:
    """How many events of this type the outbox holds, by a payload field (the token id unless told)."""
    with app.app_context():
        payloads = db.session.scalars(sa.select(OutboxEvent.payload).where(OutboxEvent.event_type == event_type))
        return Counter(payload[key] if isinstance(key, str) else tuple(payload[k] for k in key)
                       for payload in payloads)


def active_sessions(app: Flask) -> Counter:
    """Active proxy sessions, by token id."""
    with app.app_context():
        token_ids = db.session.scalars(sa.select(ProxySession.token_id).where(ProxySession.is_active.is_(True)))
        return Counter(str(token_id) for token_id in token_ids)


def cached(app: Flask, token: dict[str, Any]) -> tuple[bool, bool]:
    """(token entry present, device holder present)."""
    with app.app_context():
        client = get_redis()
        return (bool(client.exists(TOKEN_KEY + hash_secret(token["secret"]))),
                bool(client.exists(HOLDER_KEY + token["id"])))
