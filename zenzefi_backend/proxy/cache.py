"""The Redis cache of what a proxied request is judged by — tokens, their owners, device holders — and its
invalidation. PostgreSQL stays the source of truth: a miss reads it (admission.py), a revoke, a gift's retired
secret or a deactivation writes a tombstone here, and while Redis is unreachable every check is made against the
database instead.

`redis_state` pauses Redis for a moment after a failure (an outage costs one timeout, not one per request) and,
before Redis is used again, drops every cached entry the outage may have left stale.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from flask import current_app
from redis import Redis
from redis.exceptions import RedisError

from ..accounts.models import User
from ..database import db
from ..extensions import get_redis
from ..tokens.models import AccessToken, usable
from .models import ProxySession

PREFIX = "zenzefi:proxy:"
TOKEN_KEY = PREFIX + "token:"  # + sha256 of the secret
USER_KEY = PREFIX + "user:"  # + user id
HOLDER_KEY = PREFIX + "holder:"  # + token id → "<device id>\n<session id>"
UNKNOWN = "-"
TOKEN_TTL_SECONDS = 300
UNKNOWN_TTL_SECONDS = 60
USER_TTL_SECONDS = 300
REDIS_RETRY_SECONDS = 1.0

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def epoch_us(moment: datetime | None) -> int:
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
                   epoch_us(token.activated_at), epoch_us(token.expires_at), int(token.revoked_at is not None))

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
        return cls(int(user.is_active), user.effective_plan)

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


redis_state = RedisState()


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
