"""What the hot path knows about tokens, users and device holders — in Redis, with PostgreSQL behind it.

A warm proxied request costs one Redis round trip (the ADMIT script below) and no SQL. The database stays
the source of truth: a cache miss reads it, a revoke or deactivation deletes the cached entry, and while
Redis is unreachable every check is made against the database instead.

Response bytes (`bytes_out`) are known only once a response has been sent, after that round trip. They are
kept per process (`PendingBytesOut`) and written by the next ADMIT this process runs (for any token), or by
a timer at most BYTES_OUT_FLUSH_SECONDS after the response ended when no request comes, so they cost no
round trip of their own. The periodic `flush_counters` then moves them into the session rows.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from flask import current_app
from redis import Connection, ConnectionPool, Redis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from ..accounts.models import User
from ..database import db
from ..extensions import get_redis
from ..tokens.models import AccessToken, usable
from .models import ProxySession

PREFIX = "zenzefi:proxy:"
TOKEN_KEY = PREFIX + "token:"  # + sha256 of the secret
USER_KEY = PREFIX + "user:"  # + user id
HOLDER_KEY = PREFIX + "holder:"  # + token id → "<device id>\n<session id>"
RATE_KEY = PREFIX + "rate:"  # + token id + ":" + minute
SESSION_KEY = PREFIX + "session:"  # + session id → counters not yet in the database
DIRTY_SESSIONS = PREFIX + "sessions:dirty"
UNKNOWN = "-"
TOKEN_TTL_SECONDS = 300
UNKNOWN_TTL_SECONDS = 60
USER_TTL_SECONDS = 300
REDIS_RETRY_SECONDS = 1.0

# bytes_out (session, count) pairs carried by one ADMIT; the rest wait for the next one or the timer.
BYTES_OUT_PER_ADMIT = 32
# A finished response's bytes_out reaches Redis at most this long after it ended (sooner with the next ADMIT).
BYTES_OUT_FLUSH_SECONDS = 2.0

log = logging.getLogger(__name__)

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


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _epoch_us(moment: datetime | None) -> int:
    """Exact integer microseconds (no float on the way), so a cached time equals the database's."""
    return 0 if moment is None else (moment - _EPOCH) // _MICROSECOND


def _moment(epoch_us: int) -> datetime | None:
    return None if not epoch_us else _EPOCH + epoch_us * _MICROSECOND


# Replace a cached token with fresher database state, but never over a revoke's tombstone.
REFRESH = """
local current = redis.call('GET', KEYS[1])
if current and current ~= '-' and cjson.decode(current).revoked == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""


# A retired secret's tombstone, and the token's holder deleted unless it is the session ARGV[3] ('' = any holder).
RETIRE = """
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
local holder = redis.call('GET', KEYS[2])
if holder and (ARGV[3] == '' or string.sub(holder, string.find(holder, '\\n', 1, true) + 1) ~= ARGV[3]) then
  redis.call('DEL', KEYS[2])
end
return 1
"""


@dataclass(frozen=True)
class TokenState:
    id: str
    user_id: str
    scope: str
    duration_hours: int
    activated_us: int  # epoch µs, 0 = not yet
    expires_us: int  # epoch µs, 0 = not yet
    revoked: int  # 0/1 (Lua-friendly)

    @classmethod
    def of(cls, token: AccessToken) -> TokenState:
        return cls(str(token.id), str(token.user_id), token.scope, token.duration_hours,
                   _epoch_us(token.activated_at), _epoch_us(token.expires_at), int(token.revoked_at is not None))

    @classmethod
    def loads(cls, raw: str | bytes) -> TokenState:
        data = json.loads(raw)
        if "expires_at" in data:  # cached (for TOKEN_TTL_SECONDS at most) by the version that kept milliseconds
            data["activated_us"], data["expires_us"] = data.pop("activated_at") * 1000, data.pop("expires_at") * 1000
        return cls(**data)

    @classmethod
    def cached(cls, raw: str) -> TokenState:
        """`loads`, once per distinct cached entry (a warm request gets the same one back every time)."""
        return _parsed(cls, raw)

    def dumps(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @property
    def token_id(self) -> uuid.UUID:
        return uuid.UUID(self.id)

    @property
    def owner_id(self) -> uuid.UUID:
        return uuid.UUID(self.user_id)

    @property
    def activated(self) -> datetime | None:
        return _moment(self.activated_us)

    @property
    def expires(self) -> datetime | None:
        return _moment(self.expires_us)

    def usable_at(self, moment: datetime) -> bool:
        """`AccessToken.usable_at`, for the cached copy (the ADMIT script's 'invalid' is its Lua twin)."""
        return usable(bool(self.revoked), self.expires, moment)


@dataclass(frozen=True)
class UserState:
    active: int
    plan: str

    @classmethod
    def of(cls, user: User) -> UserState:
        from ..plans.services import effective_plan  # plans → ledger → … would import us back at module level

        return cls(int(user.is_active), effective_plan(user))

    @classmethod
    def loads(cls, raw: str | bytes) -> UserState:
        return cls(**json.loads(raw))

    @classmethod
    def cached(cls, raw: str) -> UserState:
        return _parsed(cls, raw)

    def dumps(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


_PARSED: dict[tuple[type, str], TokenState | UserState] = {}
_PARSED_MAX = 4096


def _parsed(cls: type[TokenState] | type[UserState], raw: str) -> TokenState | UserState:
    """The state a cached entry holds, parsed once: the states are immutable, and an entry that changes is another
    string (bounded: cleared when full)."""
    state = _PARSED.get((cls, raw))
    if state is None:
        state = cls.loads(raw)
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        _PARSED[(cls, raw)] = state
    return state


def token_from_database(token_hash: str) -> TokenState | None:
    token = db.session.scalar(sa.select(AccessToken).where(AccessToken.token_hash == token_hash))
    return None if token is None else TokenState.of(token)


def user_from_database(user_id: uuid.UUID) -> UserState | None:
    user = db.session.get(User, user_id)
    return None if user is None else UserState.of(user)


class RedisState:
    """The Redis side, with a per-process pause after a failure so an outage costs one timeout, not one per
    request.

    While Redis was unreachable, revokes and deactivations could not delete their cache entries, and devices
    may have changed hands through the database. So the first use after a failure drops every cached token,
    owner and holder entry (the database decides again); only the not yet flushed counters are kept.
    """

    def __init__(self) -> None:
        self._down_until = 0.0
        self._stale = False
        self._refresh = None

    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def failed(self) -> None:
        self._down_until = time.monotonic() + REDIS_RETRY_SECONDS
        self._stale = True

    def drop_stale_entries(self, client: Redis | None = None) -> None:
        if not self._stale:
            return
        client = client or self.client
        for pattern in (TOKEN_KEY + "*", USER_KEY + "*", HOLDER_KEY + "*"):
            batch = []
            for key in client.scan_iter(match=pattern, count=500):
                batch.append(key)
                if len(batch) >= 500:
                    client.delete(*batch)
                    batch = []
            if batch:
                client.delete(*batch)
        self._stale = False

    @property
    def client(self) -> Redis:
        return get_redis()

    def admit(self, client: Redis, token_hash: str, *, device_id: str, path_ok: bool, certificate_path: bool,
              bytes_in: int, moment: datetime, idle_seconds: int, rate_limits_json: str,
              bytes_out: list[tuple[str, int]]) -> list:
        """One EVALSHA (the script is loaded into a server the first time it lacks it); needs no app context."""
        self.drop_stale_entries(client)
        now_ms = _epoch_ms(moment)
        args = [TOKEN_KEY + token_hash, USER_KEY, now_ms, int(path_ok), int(certificate_path), HOLDER_KEY, device_id,
                idle_seconds * 1000, RATE_KEY, now_ms // 60000, rate_limits_json, SESSION_KEY, bytes_in,
                DIRTY_SESSIONS, _epoch_us(moment)]
        for session_id, count in bytes_out:
            args += (session_id, count)
        try:
            reply = _evalsha(client, args)
        except NoScriptError:
            client.script_load(ADMIT)
            reply = _evalsha(client, args)
        return [part.decode() if isinstance(part, bytes) else part for part in reply]

    def remember_token(self, token_hash: str, state: TokenState | None) -> None:
        """Fill the cache from the database, unless a fresher entry (a revoke's tombstone) got there first."""
        value = UNKNOWN if state is None else state.dumps()
        ttl = UNKNOWN_TTL_SECONDS if state is None else TOKEN_TTL_SECONDS
        self.client.set(TOKEN_KEY + token_hash, value, ex=ttl, nx=True)

    def refresh_token(self, token_hash: str, state: TokenState) -> None:
        if self._refresh is None:
            self._refresh = self.client.register_script(REFRESH)
        self._refresh(keys=[TOKEN_KEY + token_hash], args=[state.dumps(), TOKEN_TTL_SECONDS], client=self.client)

    def remember_user(self, user_id: str, state: UserState) -> None:
        self.client.set(USER_KEY + user_id, state.dumps(), ex=USER_TTL_SECONDS, nx=True)

    def cached_token(self, token_hash: str) -> str | None:
        raw = self.client.get(TOKEN_KEY + token_hash)
        return None if raw is None else raw.decode()

    def cached_user(self, user_id: str) -> str | None:
        raw = self.client.get(USER_KEY + user_id)
        return None if raw is None else raw.decode()

    def hold(self, token_id: str, device_id: str, session_id: uuid.UUID) -> bool:
        """Claim the token for a device; False if another request claimed it first."""
        idle_ms = current_app.config["SESSION_IDLE_SECONDS"] * 1000
        return bool(self.client.set(HOLDER_KEY + token_id, f"{device_id}\n{session_id}", nx=True, px=idle_ms))

    def holder(self, token_id: str) -> tuple[str, int] | None:
        """(device id, milliseconds until it lapses) of the device holding the token in Redis, if any."""
        pipe = self.client.pipeline(transaction=True)
        pipe.get(HOLDER_KEY + token_id)
        pipe.pttl(HOLDER_KEY + token_id)
        value, ttl_ms = pipe.execute()
        return None if value is None else (value.decode().partition("\n")[0], ttl_ms)

    def holder_exists(self, token_id: uuid.UUID) -> bool:
        return bool(self.client.exists(HOLDER_KEY + str(token_id)))

    def add_bytes_out(self, client: Redis, counts: list[tuple[str, int]]) -> None:
        pipe = client.pipeline(transaction=False)
        for session_id, count in counts:
            pipe.hincrby(SESSION_KEY + session_id, "bytes_out", count)
            pipe.sadd(DIRTY_SESSIONS, session_id)
        pipe.execute()


redis_state = RedisState()


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
    """EVALSHA on this thread's own connection, failing as the client would (it retries no command either)."""
    connection = own_connection(client)
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


class PendingBytesOut:
    """Response bytes of this process not yet in Redis, by session id.

    `take` hands them to the next ADMIT (which adds them in the same round trip). A timer, armed by the first
    count that arrives while none is armed, hands whatever is left to `flush` BYTES_OUT_FLUSH_SECONDS later,
    so no count waits longer than that even when no request follows. `flush` gives back what it could not
    write.
    """

    def __init__(self, flush: Callable[[list[tuple[str, int]]], None]):
        self._flush = flush
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._timer_pid = 0  # the process whose timer is armed (a timer does not survive a fork)
        _all_pending.add(self)

    def add(self, session_id: str, count: int) -> None:
        if count > 0:
            self.give_back([(session_id, count)])

    def take(self, limit: int | None = None) -> list[tuple[str, int]]:
        if not self._counts:  # nothing pending: no need for the lock
            return []
        with self._lock:
            if limit is None or len(self._counts) <= limit:
                taken, self._counts = list(self._counts.items()), {}
            else:
                taken = [(key, self._counts.pop(key)) for key in list(self._counts)[:limit]]
        return taken

    def give_back(self, counts: list[tuple[str, int]]) -> None:
        if not counts:
            return
        pid = os.getpid()
        with self._lock:
            for session_id, count in counts:
                self._counts[session_id] = self._counts.get(session_id, 0) + count
            if self._timer_pid == pid:
                return
            self._timer_pid = pid
        timer = threading.Timer(BYTES_OUT_FLUSH_SECONDS, self._on_timer)
        timer.daemon = True
        timer.name = "proxy-bytes-out"
        timer.start()

    def flush_now(self) -> None:
        counts = self.take()
        if counts:
            self._flush(counts)

    def _on_timer(self) -> None:
        with self._lock:
            self._timer_pid = 0
        try:
            self.flush_now()
        except Exception:
            log.exception("proxy: cannot flush bytes_out counters")


_all_pending: weakref.WeakSet[PendingBytesOut] = weakref.WeakSet()


@atexit.register
def _flush_pending_at_exit() -> None:
    """A worker that stops (gunicorn restarts it, a deploy) writes what it still holds."""
    for pending in list(_all_pending):
        try:
            pending.flush_now()
        except Exception:
            log.warning("proxy: bytes_out counters lost at exit", exc_info=True)


def _invalidate(action) -> None:
    try:
        action(redis_state.client)
    except RedisError:
        redis_state.failed()  # the cache is dropped before Redis is used again; the sweep repeats this too


def mark_revoked(token: AccessToken) -> None:
    """After a revoke: a tombstone (not a mere delete, which a concurrent cache fill could undo) and the
    device released, so the very next request is refused."""
    state = replace(TokenState.of(token), revoked=1)

    def write(client: Redis) -> None:
        pipe = client.pipeline(transaction=False)
        pipe.set(TOKEN_KEY + token.token_hash, state.dumps(), ex=TOKEN_TTL_SECONDS)
        pipe.delete(HOLDER_KEY + str(token.id))
        pipe.execute()

    _invalidate(write)


def mark_secret_retired(token: AccessToken, secret_hash: str, current_session_id: uuid.UUID | None = None) -> None:
    """After a gift rotated the secret (and again from the sweep): the old secret's tombstone, and the giver's
    device released — unless the holder is `current_session_id`, the token's active session in the database
    (the recipient's by then, whom the sweep must not disturb). The token's new secret is untouched."""
    state = replace(TokenState.of(token), revoked=1)
    _invalidate(lambda client: client.eval(
        RETIRE, 2, TOKEN_KEY + secret_hash, HOLDER_KEY + str(token.id), state.dumps(), TOKEN_TTL_SECONDS,
        "" if current_session_id is None else str(current_session_id)))


def mark_inactive(user: User) -> None:
    """After a deactivation: the owner's tombstone refuses every token of theirs on the next request."""
    _invalidate(lambda client: client.set(USER_KEY + str(user.id), UserState(0, user.plan).dumps(),
                                          ex=USER_TTL_SECONDS))


def forget_token(token_hash: str) -> None:
    """After a change the database knows better (activation): the next request reads it again."""
    _invalidate(lambda client: client.delete(TOKEN_KEY + token_hash))


def forget_user(user_id: uuid.UUID) -> None:
    """After a plan change or reactivation."""
    _invalidate(lambda client: client.delete(USER_KEY + str(user_id)))


def release_holder(token_id: uuid.UUID) -> None:
    _invalidate(lambda client: client.delete(HOLDER_KEY + str(token_id)))


def reassert_recent_invalidations(since: datetime) -> int:
    """Write the tombstones of recent revokes, gifts' retired secrets and deactivations again (periodic sweep): a
    process that could not reach Redis at the time cannot leave a stale 'valid' entry behind for long."""
    tokens = db.session.scalars(sa.select(AccessToken).where(AccessToken.revoked_at >= since)).all()
    gifted = db.session.execute(
        sa.select(AccessToken, ProxySession.id)
        .outerjoin(ProxySession, sa.and_(ProxySession.token_id == AccessToken.id, ProxySession.is_active.is_(True)))
        .where(AccessToken.gifted_at >= since, AccessToken.retired_token_hash.is_not(None))
    ).all()
    users = db.session.scalars(sa.select(User).where(User.is_active.is_(False), User.updated_at >= since)).all()
    for token in tokens:
        mark_revoked(token)
    for token, current_session_id in gifted:
        mark_secret_retired(token, token.retired_token_hash, current_session_id)
    for user in users:
        mark_inactive(user)
    return len(tokens) + len(gifted) + len(users)
