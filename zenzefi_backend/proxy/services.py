"""The proxy's checks, in SPEC §3.6's order, and lazy activation."""
from __future__ import annotations

import re
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from flask import current_app
from redis.exceptions import RedisError

from ..clock import now
from ..database import db
from ..errors import BadRequest, Forbidden, RateLimited, Unauthorized
from ..metrics import token_validations
from ..notifications.outbox import emit
from ..tokens.models import AccessToken
from . import sessions
from .paths import NotCanonical, allowed_for_certificates_only, canonical
from .runtime import ProxyRuntime
from .state import (
    BYTES_OUT_PER_ADMIT,
    TokenState,
    UserState,
    hash_secret,
    redis_state,
    token_from_database,
    user_from_database,
)

DEVICE_ID = re.compile(r"[A-Za-z0-9._:-]{8,255}")
ADMIT_ATTEMPTS = 4
_VALIDATIONS = {result: token_validations.labels(result) for result in ("cache_hit", "cache_miss", "invalid")}


class MissingDeviceId(Forbidden):
    message = "The X-Device-ID header is required."


class MalformedDeviceId(BadRequest):
    message = "X-Device-ID must be 8 to 255 characters of letters, digits, '.', '_', ':' or '-'."


class MissingAccessToken(Unauthorized):
    message = "The X-Access-Token header is required."


class InvalidAccessToken(Unauthorized):
    message = "This access token is not valid: unknown, revoked or expired."


class PathNotCanonical(BadRequest):
    message = ("This path is not allowed (dot segments, '//', backslashes, encoded slashes, ';' and control "
               "characters are refused).")


class OutsideScope(Forbidden):
    message = "This token's scope does not allow this path."


class ProxyRateLimited(RateLimited):
    message = "Too many requests with this token; slow down."


@dataclass(frozen=True)
class Admission:
    token: TokenState
    user: UserState
    session_id: str
    via_redis: bool
    token_hash: str  # the secret's hash this request was admitted with (a gift may rotate it meanwhile)


def _check_headers(secret: str | None, device_id: str | None) -> None:
    if device_id is None:
        raise MissingDeviceId()
    if not DEVICE_ID.fullmatch(device_id):
        raise MalformedDeviceId()
    if not secret:
        raise MissingAccessToken()


# Verdicts of paths seen lately: judged before the token is, so bounded in entries and in path length (at most
# _VERDICTS_MAX x _VERDICT_PATH_LENGTH characters, whatever anybody sends).
_VERDICTS: dict[str, tuple[bool, bool]] = {}
_VERDICTS_MAX = 4096
_VERDICT_PATH_LENGTH = 256


def _path_verdicts(subpath: str) -> tuple[bool, bool]:
    """(canonical, allowed for certificates_only), judged once per path (a warm client asks for the same ones)."""
    verdicts = _VERDICTS.get(subpath)
    if verdicts is None:
        try:
            path = canonical(subpath)
        except NotCanonical:
            verdicts = (False, False)
        else:
            verdicts = (True, allowed_for_certificates_only(path))
        if len(subpath) <= _VERDICT_PATH_LENGTH:
            if len(_VERDICTS) >= _VERDICTS_MAX:
                _VERDICTS.clear()
            _VERDICTS[subpath] = verdicts
    return verdicts


def _invalid() -> InvalidAccessToken:
    _VALIDATIONS["invalid"].inc()
    return InvalidAccessToken()


def admit(runtime: ProxyRuntime, secret: str | None, device_id: str | None, subpath: str, *,
          ip_address: str | None, user_agent: str | None, bytes_in: int) -> Admission:
    """Every check of SPEC §3.6, in order; the device's session and the request count on success.

    A warm request needs no app context: one Redis round trip. The database is used (inside the app's
    context) on a cache miss, to claim the device, and for everything while Redis is unreachable."""
    _check_headers(secret, device_id)
    path_ok, certificate_path = _path_verdicts(subpath)
    token_hash = hash_secret(secret)
    if redis_state.available():
        try:
            return _admit_with_redis(runtime, token_hash, device_id, path_ok, certificate_path, ip_address,
                                     user_agent, bytes_in)
        except RedisError:
            redis_state.failed()
            with runtime.app_context():
                db.session.rollback()
    with runtime.app_context():
        return _admit_with_database(token_hash, device_id, path_ok, certificate_path, ip_address, user_agent,
                                    bytes_in)


def _run_admit_script(runtime: ProxyRuntime, token_hash: str, device_id: str, path_ok: bool,
                      certificate_path: bool, bytes_in: int, carry_bytes_out: bool) -> list:
    """The ADMIT round trip, carrying this process's pending bytes_out (given back if the call fails)."""
    config = runtime.config
    pending = runtime.bytes_out.take(BYTES_OUT_PER_ADMIT) if carry_bytes_out else []
    try:
        return redis_state.admit(runtime.redis, token_hash, device_id=device_id, path_ok=path_ok,
                                 certificate_path=certificate_path, bytes_in=bytes_in, moment=now(),
                                 idle_seconds=config["SESSION_IDLE_SECONDS"],
                                 rate_limits_json=config["PROXY_RATE_LIMITS_JSON"], bytes_out=pending)
    except RedisError:
        runtime.bytes_out.give_back(pending)
        raise


def _admit_with_redis(runtime: ProxyRuntime, token_hash: str, device_id: str, path_ok: bool,
                      certificate_path: bool, ip_address: str | None, user_agent: str | None,
                      bytes_in: int) -> Admission:
    cache_result = "cache_hit"
    for attempt in range(ADMIT_ATTEMPTS):
        reply = _run_admit_script(runtime, token_hash, device_id, path_ok, certificate_path, bytes_in,
                                  carry_bytes_out=attempt == 0)
        verdict = reply[0]
        if verdict == "ok":
            _VALIDATIONS[cache_result].inc()
            return Admission(TokenState.cached(reply[1]), UserState.cached(reply[2]), reply[3], via_redis=True,
                             token_hash=token_hash)
        if verdict == "token_miss":
            cache_result = "cache_miss"
            with runtime.app_context():
                state = token_from_database(token_hash)
                redis_state.remember_token(token_hash, state)
            if state is None:
                raise _invalid()
            continue
        if verdict == "user_miss":
            cache_result = "cache_miss"
            owner = TokenState.loads(reply[1]).owner_id
            with runtime.app_context():
                user = user_from_database(owner)
                if user is not None:
                    redis_state.remember_user(str(owner), user)
            if user is None:
                raise _invalid()
            continue
        if verdict == "invalid":
            raise _invalid()
        _VALIDATIONS[cache_result].inc()
        if verdict == "bad_path":
            raise PathNotCanonical()
        if verdict == "scope":
            raise OutsideScope()
        if verdict == "busy":
            raise sessions.DeviceInUse(int(reply[3]) / 1000, idle_seconds=runtime.config["SESSION_IDLE_SECONDS"])
        if verdict == "limited":
            raise ProxyRateLimited(int(reply[3]))
        # "claim": no device holds the token in Redis; the database decides (and remembers the session).
        token = TokenState.loads(reply[1])
        with runtime.app_context():
            session_id = sessions.claim(token.token_id, token.owner_id, device_id, ip_address, user_agent)
            redis_state.hold(token.id, device_id, session_id)
    raise RedisError("the admission did not settle")  # served from the database instead


class _LocalRateWindow:
    """Per-process fixed windows, used only while Redis is unreachable."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, int], int] = {}

    def hit(self, key: str, limit: int) -> int | None:
        """None when allowed, else seconds until the window resets."""
        minute = int(time.time() // 60)
        with self._lock:
            if len(self._counts) > 10_000:
                self._counts = {k: v for k, v in self._counts.items() if k[1] == minute}
            count = self._counts.get((key, minute), 0) + 1
            self._counts[(key, minute)] = count
        return None if count <= limit else 60 - int(time.time() % 60)


_local_rate = _LocalRateWindow()


def _admit_with_database(token_hash: str, device_id: str, path_ok: bool, certificate_path: bool,
                         ip_address: str | None, user_agent: str | None, bytes_in: int) -> Admission:
    token = token_from_database(token_hash)
    user = user_from_database(token.owner_id) if token else None
    if token is None or user is None or not user.active or not token.usable_at(now()):
        raise _invalid()
    _VALIDATIONS["cache_miss"].inc()
    if not path_ok:
        raise PathNotCanonical()
    if token.scope == "certificates_only" and not certificate_path:
        raise OutsideScope()
    session_id = sessions.claim(token.token_id, token.owner_id, device_id, ip_address, user_agent,
                                count_request=True, bytes_in=bytes_in)
    limits = current_app.config["PROXY_RATE_LIMITS"]
    retry_after = _local_rate.hit(token.id, limits.get(user.plan, limits["free"]))
    if retry_after is not None:
        raise ProxyRateLimited(retry_after)
    return Admission(token, user, str(session_id), via_redis=False, token_hash=token_hash)


def activate_if_first_use(runtime: ProxyRuntime, admission: Admission) -> None:
    """The clock starts on the first request the upstream answered; concurrent first requests agree on one start.
    Only while the token still has the secret the request was admitted with: a gift that rotated it meanwhile
    wins, and the recipient's first request starts the clock."""
    if admission.token.activated_us:
        return
    with runtime.app_context():
        _activate(admission)


def _activate(admission: Admission) -> None:
    token = admission.token
    moment = now()
    started = db.session.execute(
        sa.update(AccessToken)
        .where(AccessToken.id == token.token_id, AccessToken.activated_at.is_(None),
               AccessToken.token_hash == admission.token_hash)
        .values(activated_at=moment, expires_at=moment + timedelta(hours=token.duration_hours))
        .returning(AccessToken.id)
        .execution_options(synchronize_session=False)
    ).first()
    if started:
        emit("token.activated", token.owner_id, token_id=token.id, activated_at=moment.isoformat(),
             expires_at=(moment + timedelta(hours=token.duration_hours)).isoformat())
    db.session.commit()
    if admission.via_redis:
        row = db.session.get(AccessToken, token.token_id)
        try:
            redis_state.refresh_token(row.token_hash, TokenState.of(row))
        except RedisError:
            redis_state.failed()


def record_bytes_out(runtime: ProxyRuntime, admission: Admission, count: int) -> None:
    """Counted in Redis by a later round trip (see PendingBytesOut); without Redis, in the session row now."""
    if admission.via_redis:
        runtime.bytes_out.add(admission.session_id, count)
        return
    with runtime.app_context():
        sessions.add_bytes_out(uuid.UUID(admission.session_id), count)


def status_of(secret: str | None, device_id: str | None = None) -> dict[str, Any]:
    """What `/proxy/status` shows; never activates and never touches the device holder. With a device id, also
    whether that device could use the token now (the device rule), in the proxy's check order."""
    if device_id is not None and not DEVICE_ID.fullmatch(device_id):
        raise MalformedDeviceId()
    if not secret:
        raise MissingAccessToken()
    token_hash = hash_secret(secret)
    token = user = None
    if redis_state.available():
        try:
            redis_state.drop_stale_entries()
            token, user = _cached(token_hash)
        except RedisError:
            redis_state.failed()
    if token is None:
        token = token_from_database(token_hash)
        user = user_from_database(token.owner_id) if token else None
    moment = now()
    if token is None or user is None or not user.active or not token.usable_at(moment):
        raise _invalid()
    expires = token.expires
    remaining = (expires - moment) if expires else timedelta(hours=token.duration_hours)
    status = {
        "connected": True, "user_id": token.user_id, "token_id": token.id, "scope": token.scope,
        "is_activated": bool(token.activated_us), "status": "active" if token.activated_us else "ready",
        "duration_hours": token.duration_hours, "expires_at": expires,
        "time_remaining_seconds": max(0, int(remaining.total_seconds())),
    }
    if device_id is not None:
        status.update(_device_use(token, device_id, moment))
    return status


def _device_use(token: TokenState, device_id: str, moment: datetime) -> dict[str, Any]:
    """The device rule as the next proxied request would meet it: Redis' holder when there is one, else the
    database's active session (what `sessions.claim` decides), never claiming anything."""
    holder = None
    if redis_state.available():
        try:
            holder = redis_state.holder(token.id)
        except RedisError:
            redis_state.failed()
    if holder is not None:
        held_by, ttl_ms = holder
        held = None if held_by == device_id else timedelta(milliseconds=max(ttl_ms, 0))
    else:
        held = sessions.held_by_another_device(token.token_id, device_id)
    if held is None:
        return {"device_can_use": True, "held_by_other_device": False, "retry_after_seconds": None,
                "available_at": None}
    idle = current_app.config["SESSION_IDLE_SECONDS"]
    return {"device_can_use": False, "held_by_other_device": True,
            "retry_after_seconds": sessions.wait_seconds(held.total_seconds(), idle), "available_at": moment + held}


def _cached(token_hash: str) -> tuple[TokenState | None, UserState | None]:
    raw = redis_state.cached_token(token_hash)
    if raw is None or raw == "-":
        return None, None
    token = TokenState.loads(raw)
    user_raw = redis_state.cached_user(token.user_id)
    return (token, UserState.loads(user_raw)) if user_raw else (None, None)
