"""Admission: may this request go through? Every check of SPEC §3.6, in its order, and the token's first use.

A warm request is judged in one Redis round trip: the ADMIT script below checks the cached token and owner
(cache.py), the path's verdicts, the device holder, the rate limit, and counts the request. Python handles every
answer but 'ok': a cache miss is filled from the database and ADMIT runs again, a token nobody holds is claimed
through the database (sessions.py). While Redis is unreachable, the same checks run against the database (the
fallback below, with a per-process rate window). `status_of` answers `/proxy/status` with the same rules, read
only. After the upstream answered, `activate_if_first_use` starts the token's clock.
"""
from __future__ import annotations

import hashlib
import os
import re
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from flask import current_app
from redis import Connection, ConnectionPool, Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError

from ..accounts.models import User
from ..clock import now
from ..database import db
from ..errors import BadRequest, Forbidden, RateLimited, Unauthorized
from ..metrics import token_validations
from ..notifications.outbox import emit
from ..tokens.models import AccessToken, hash_secret
from . import sessions
from .cache import HOLDER_KEY, PREFIX, TOKEN_KEY, USER_KEY, TokenState, UserState, epoch_ms, epoch_us, redis_state
from .counters import BYTES_OUT_PER_ADMIT, DIRTY_SESSIONS, SESSION_KEY
from .paths import NotCanonical, allowed_for_certificates_only, canonical
from .runtime import ProxyRuntime

DEVICE_ID_PATTERN = r"[A-Za-z0-9._:-]{8,255}"  # X-Device-ID, whole
DEVICE_ID = re.compile(DEVICE_ID_PATTERN)
RATE_KEY = PREFIX + "rate:"  # + token id + ":" + minute
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
        return run_admit(runtime.redis, token_hash, device_id=device_id, path_ok=path_ok,
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
            owner = TokenState.cached(reply[1]).owner_id
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
        token = TokenState.cached(reply[1])
        with runtime.app_context():
            session_id = sessions.claim(token.token_id, token.owner_id, device_id, ip_address, user_agent)
            redis_state.hold(token.id, device_id, session_id)
    raise RedisError("the admission did not settle")  # served from the database instead


# One round trip for a warm request: token, owner, path verdicts, device holder, rate limit, counters —
# in the order SPEC §3.6 checks them. Python handles every answer other than 'ok'. First, whatever verdict
# follows, it adds the bytes_out this process has pending (ARGV[15], [16], … as session id, count pairs).
# Times: ARGV[2] is now in epoch ms (session activity), ARGV[14] in epoch µs (expiry, as precise as the database).
ADMIT = """
for i = 15, #ARGV, 2 do
  redis.call('HINCRBY', ARGV[11] .. ARGV[i], 'bytes_out', ARGV[i + 1])
  redis.call('SADD', ARGV[13], ARGV[i])
end
local raw = redis.call('GET', KEYS[1])
if not raw then return {'token_miss'} end
if raw == '-' then return {'invalid'} end
local token = cjson.decode(raw)
local user_raw = redis.call('GET', ARGV[1] .. token.user_id)
if not user_raw then return {'user_miss', raw} end
local user = cjson.decode(user_raw)
local expires_us = token.expires_us or token.expires_at * 1000
if token.revoked == 1 or user.active == 0 or (expires_us > 0 and tonumber(ARGV[14]) >= expires_us) then
  return {'invalid', raw, user_raw}
end
if ARGV[3] ~= '1' then return {'bad_path', raw, user_raw} end
if token.scope == 'certificates_only' and ARGV[4] ~= '1' then return {'scope', raw, user_raw} end
local holder_key = ARGV[5] .. token.id
local holder = redis.call('GET', holder_key)
if not holder then return {'claim', raw, user_raw} end
local cut = string.find(holder, '\\n', 1, true)
if string.sub(holder, 1, cut - 1) ~= ARGV[6] then
  return {'busy', raw, user_raw, redis.call('PTTL', holder_key)}
end
redis.call('PEXPIRE', holder_key, ARGV[7])
local rate_key = ARGV[8] .. token.id .. ':' .. ARGV[9]
local count = redis.call('INCR', rate_key)
if count == 1 then redis.call('EXPIRE', rate_key, 61) end
local limits = cjson.decode(ARGV[10])
if count > (limits[user.plan] or limits['free']) then
  return {'limited', raw, user_raw, redis.call('TTL', rate_key)}
end
local session = string.sub(holder, cut + 1)
local session_key = ARGV[11] .. session
redis.call('HINCRBY', session_key, 'requests', 1)
redis.call('HINCRBY', session_key, 'bytes_in', ARGV[12])
redis.call('HSET', session_key, 'last_activity', ARGV[2])
redis.call('SADD', ARGV[13], session)
return {'ok', raw, user_raw, session}
"""


ADMIT_SHA = hashlib.sha1(ADMIT.encode()).hexdigest()  # noqa: S324 - Redis names scripts by their SHA-1


def run_admit(client: Redis, token_hash: str, *, device_id: str, path_ok: bool, certificate_path: bool,
               bytes_in: int, moment: datetime, idle_seconds: int, rate_limits_json: str,
               bytes_out: list[tuple[str, int]]) -> list:
    """One EVALSHA (the script is loaded into a server the first time it lacks it); needs no app context."""
    redis_state.drop_stale_entries(client)
    now_ms = epoch_ms(moment)
    args = [TOKEN_KEY + token_hash, USER_KEY, now_ms, int(path_ok), int(certificate_path), HOLDER_KEY, device_id,
            idle_seconds * 1000, RATE_KEY, now_ms // 60000, rate_limits_json, SESSION_KEY, bytes_in,
            DIRTY_SESSIONS, epoch_us(moment)]
    for session_id, count in bytes_out:
        args += (session_id, count)
    try:
        reply = _evalsha(client, args)
    except NoScriptError:
        client.script_load(ADMIT)
        reply = _evalsha(client, args)
    return [part.decode() if isinstance(part, bytes) else part for part in reply]


class _OwnConnection(threading.local):
    """This thread's connection for the ADMIT round trip, taken from the client's pool once and kept: a warm request
    pays for no pool lock, checkout or release (gunicorn's threads never wait on each other's), only the command.
    After a failure it is given back and the next ADMIT takes a new one (see `_drop_own_connection`)."""

    pool: ConnectionPool | None = None
    connection: Connection | None = None
    generation = -1


_own = _OwnConnection()
_generation = 0  # moves on in a forked child: a connection never crosses fork()


def _after_fork_in_child() -> None:
    global _generation
    _generation += 1


os.register_at_fork(after_in_child=_after_fork_in_child)


def own_connection(client: Redis) -> Connection:
    own = _own
    pool = client.connection_pool
    if own.connection is not None and own.pool is pool and own.generation == _generation:
        return own.connection
    connection = pool.get_connection()  # (connects: when this fails, nothing has changed)
    if own.connection is not None and own.generation == _generation:
        own.pool.release(own.connection)  # another client now (tests swap them): the old one goes back
    own.connection, own.pool, own.generation = connection, pool, _generation
    return connection


def _evalsha(client: Redis, args: list) -> list:
    """EVALSHA on this thread's own connection. A thread's connection can be long dead when it next runs ADMIT (Redis
    restarted, or came back after an outage this thread slept through; each thread finds out on its own), and the
    pool's checkout and the client's retry, which spare every other command this, are bypassed here. So a broken
    connection (ConnectionError, not a timeout: a hanging Redis costs one timeout) gets one more try on a fresh
    one; only when that fails too is Redis unreachable — otherwise every thread's stale connection would mark the
    whole process down again (and drop the cache) one after another."""
    connection = own_connection(client)
    try:
        return _admit_round_trip(connection, args)
    except RedisConnectionError:
        connection = own_connection(client)
    return _admit_round_trip(connection, args)


def _admit_round_trip(connection: Connection, args: list) -> list:
    try:
        connection.send_command("EVALSHA", ADMIT_SHA, 1, *args)
        return connection.read_response()
    except ResponseError:
        raise  # NOSCRIPT or a script error: the connection is fine
    except BaseException:
        _drop_own_connection(connection)
        raise


def _drop_own_connection(connection: Connection) -> None:
    """After a failure the connection goes back to its pool, closed (nothing half read is left for the next
    command), and the next ADMIT takes one through `pool.get_connection()`. That is the call that asks the
    Sentinels where the primary is now: a connection that reconnected by itself (as redis-py's send_command
    does) would go back to the address it had, the dead or demoted primary's."""
    own = _own
    connection.disconnect()
    if own.connection is connection:
        own.pool.release(connection)
        own.connection = None


def token_from_database(token_hash: str) -> TokenState | None:
    token = db.session.scalar(sa.select(AccessToken).where(AccessToken.token_hash == token_hash))
    return None if token is None else TokenState.of(token)


def user_from_database(user_id: uuid.UUID) -> UserState | None:
    user = db.session.get(User, user_id)
    return None if user is None else UserState.of(user)


class _LocalRateWindow:
    """Per-process fixed windows of a minute on the movable clock (as ADMIT's), used only while Redis is
    unreachable."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, int], int] = {}

    def hit(self, key: str, limit: int) -> int | None:
        """None when allowed, else seconds until the window resets."""
        seconds = now().timestamp()
        minute = int(seconds // 60)
        with self._lock:
            if len(self._counts) > 10_000:
                self._counts = {k: v for k, v in self._counts.items() if k[1] == minute}
            count = self._counts.get((key, minute), 0) + 1
            self._counts[(key, minute)] = count
        return None if count <= limit else 60 - int(seconds % 60)


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

