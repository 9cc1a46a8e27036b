"""How the proxy follows what the domains announce (zenzefi_backend.events): its Redis cache and its open sessions.

`subscribe` connects the receivers; the application factory calls it once. For each event the cache comes first
(the very next proxied request must see the change), then the session rows, in a transaction of their own.
A receiver that fails leaves the others' work in place (events.deliver); what it could not do is repaired by
the proxy sweep: `reassert_recent_invalidations` writes the tombstones of recent revokes, gifts and deactivations
again, and `close_idle_sessions` closes the sessions of revoked and expired tokens. A deactivated user's or a
gift giver's session that could not be closed stays open until it is idle: the proxy refuses its requests
meanwhile (the owner's tombstone, the retired secret), and a recipient on another device gets 409 until then.
"""
from __future__ import annotations

import uuid

from .. import events
from ..accounts.models import User
from ..database import db
from ..tokens.models import AccessToken
from . import cache, sessions


def _refuse_revoked_token(_sender, *, token: AccessToken, **_facts) -> None:
    cache.mark_revoked(token)


def _end_sessions_of_revoked_token(_sender, *, token: AccessToken, **_facts) -> None:
    sessions.end_for_token(token.id, "revoked")
    db.session.commit()


def _refuse_retired_secret(_sender, *, token: AccessToken, retired_hash: str, **_facts) -> None:
    cache.mark_secret_retired(token, retired_hash)


def _end_giver_session(_sender, *, token: AccessToken, **_facts) -> None:
    sessions.end_for_token(token.id, "gifted")
    db.session.commit()


def _forget_expired_token(_sender, *, token_id: uuid.UUID, token_hash: str, **_facts) -> None:
    cache.forget_token(token_hash)
    cache.release_holder(token_id)


def _end_sessions_of_expired_token(_sender, *, token_id: uuid.UUID, **_facts) -> None:
    sessions.end_for_token(token_id, "expired")
    db.session.commit()


def _refuse_inactive_user(_sender, *, user: User, **_facts) -> None:
    cache.mark_inactive(user)


def _end_sessions_of_inactive_user(_sender, *, user: User, **_facts) -> None:
    sessions.end_for_user(user.id, "deactivated")
    db.session.commit()


def _forget_user(_sender, *, user_id: uuid.UUID, **_facts) -> None:
    cache.forget_user(user_id)  # the next request reads the owner again: active, and the plan's rate limit


def _release_device(_sender, *, token_id: uuid.UUID, **_facts) -> None:
    cache.release_holder(token_id)  # the next request from any device may claim the token


RECEIVERS = (
    (events.token_revoked, (_refuse_revoked_token, _end_sessions_of_revoked_token)),
    (events.token_gifted, (_refuse_retired_secret, _end_giver_session)),
    (events.token_expired, (_forget_expired_token, _end_sessions_of_expired_token)),
    (events.user_deactivated, (_refuse_inactive_user, _end_sessions_of_inactive_user)),
    (events.user_reactivated, (_forget_user,)),
    (events.plan_changed, (_forget_user,)),
    (events.session_ended_by_admin, (_release_device,)),
)


def subscribe() -> None:
    for signal, receivers in RECEIVERS:
        for receiver in receivers:
            signal.connect(receiver)
