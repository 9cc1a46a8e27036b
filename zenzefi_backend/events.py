"""Domain events: what a domain announces once its change has committed, for other packages to follow.

A service calls `announce(token_revoked, token=…)` inside its transaction; the signal is sent when that
transaction's `commit()` has returned (`database.when_committed`), and never if it rolls back. Receivers live in
the package whose state must follow (proxy/subscriptions.py: the cache and the open sessions), connected once by
the application factory, so no service reaches into another package to clean up after itself.

What a receiver may rely on and must do:
- the change is committed and visible; the receiver runs outside any transaction and, if it writes to the
  database, commits its own work;
- each receiver is called on its own: one that raises is logged and its unfinished work rolled back; the
  committed change and every other receiver's work stand. Whatever a receiver could not do must be repaired by
  a sweep (the proxy's re-tombstoning of recent revokes, gifts and deactivations, and its session sweep).

Senders are `None`; the facts travel as keyword arguments.
"""
from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any

from blinker import NamedSignal, Namespace

from .database import db, when_committed

log = logging.getLogger(__name__)
_signals = Namespace()

# token: the AccessToken (revoked by its owner, with a refund, or by a superuser)
token_revoked = _signals.signal("token-revoked")
# token: the gifted AccessToken (new secret), retired_hash: the SHA-256 of the secret the gift replaced
token_gifted = _signals.signal("token-gifted")
# token_id, token_hash: a token the expiry sweep processed
token_expired = _signals.signal("token-expired")
# user: the User, is_active now False
user_deactivated = _signals.signal("user-deactivated")
# user_id: a User let back in
user_reactivated = _signals.signal("user-reactivated")
# user_id: a User whose (effective) plan or its expiry changed: bought, expired, granted, set by a superuser
plan_changed = _signals.signal("plan-changed")
# token_id: a proxy session a superuser ended
session_ended_by_admin = _signals.signal("session-ended-by-admin")


def announce(signal: NamedSignal, **facts: Any) -> None:
    """Send `signal` with `facts` once the current transaction has committed (at once when none is open)."""
    when_committed(lambda: deliver(signal, facts))


def receivers_of(signal: NamedSignal) -> list[Callable[..., Any]]:
    """The receivers of `signal` in the order they were connected (blinker's `receivers_for` walks a set). Every
    receiver here is connected for any sender: the senders are always `None`."""
    found = []
    for receiver in list(signal.receivers.values()):
        if isinstance(receiver, weakref.ref):
            receiver = receiver()
        if receiver is not None:
            found.append(receiver)
    return found


def deliver(signal: NamedSignal, facts: dict[str, Any]) -> None:
    """Call every receiver of `signal` in connection order, each on its own (see the module docstring)."""
    for receiver in receivers_of(signal):
        try:
            receiver(None, **facts)
        except Exception:
            log.exception("a receiver of %s failed; the change stands", signal.name,
                          extra={"event": signal.name, "receiver": getattr(receiver, "__qualname__", repr(receiver))})
            try:
                db.session.rollback()
            except Exception:
                log.warning("cannot roll back after a failed receiver", exc_info=True)
