"""Accounts: registration, login, JWT issue and revocation, profile and password changes."""
from __future__ import annotations

import secrets
import string
import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from flask import current_app
from flask_jwt_extended import create_access_token, create_refresh_token, decode_token
from flask_jwt_extended.exceptions import JWTExtendedException
from jwt.exceptions import PyJWTError
from sqlalchemy.exc import IntegrityError

from .. import events, metrics
from ..audit.services import record
from ..database import db
from ..errors import Conflict, InvalidCredentials, Unauthorized, ValidationFailed
from .emails import InvalidEmail, canonical_email, lookup_form
from .models import RevokedJwt, User
from .passwords import hash_password, needs_rehash, verify_password

REFERRAL_ALPHABET = string.ascii_uppercase + string.digits
REFERRAL_CODE_LENGTH = 12


class DuplicateAccount(Conflict):
    message = "An account with this e-mail or username already exists."


def new_referral_code() -> str:
    return "".join(secrets.choice(REFERRAL_ALPHABET) for _ in range(REFERRAL_CODE_LENGTH))


def _unused_referral_code() -> str:
    for _ in range(10):
        code = new_referral_code()
        if db.session.scalar(sa.select(User.id).where(User.referral_code == code)) is None:
            return code
    raise RuntimeError("could not find an unused referral code")  # 36**12 codes: practically unreachable


def find_by_email(email: str) -> User | None:
    return db.session.scalar(sa.select(User).where(User.email == lookup_form(email)))


def _account_exists(email: str, username: str) -> bool:
    clash = sa.select(User.id).where(
        sa.or_(User.email == email, sa.func.lower(User.username) == username.lower())
    )
    return db.session.scalar(clash) is not None


def register_user(
    *, email: str, username: str, password: str, full_name: str | None = None, referral_code: str | None = None
) -> User:
    try:
        email = canonical_email(email)
    except InvalidEmail as exc:
        raise ValidationFailed({"email": [str(exc)]}) from None
    referrer = None
    if referral_code:
        referrer = db.session.scalar(sa.select(User).where(User.referral_code == referral_code.strip().upper()))
        if referrer is None:
            raise ValidationFailed({"referral_code": ["Unknown referral code."]})
    if _account_exists(email, username):
        raise DuplicateAccount()
    user = User(
        email=email,
        username=username,
        password_hash=hash_password(password),
        full_name=full_name,
        referral_code=_unused_referral_code(),
        referred_by_id=referrer.id if referrer else None,
    )
    db.session.add(user)
    try:
        db.session.flush()
    except IntegrityError:
        # A concurrent registration won the race for the e-mail, username or referral code.
        db.session.rollback()
        if _account_exists(email, username):
            raise DuplicateAccount() from None
        raise
    record("user.registered", actor_id=user.id, resource_type="user", resource_id=user.id,
           details={"referred_by": str(referrer.id) if referrer else None})
    db.session.commit()
    return user


def authenticate(email: str, password: str) -> User:
    """Unknown e-mail, wrong password and inactive account look the same, and cost the same time."""
    user = find_by_email(email)
    password_ok = verify_password(user.password_hash if user else None, password)
    if user is None or not password_ok or not user.is_active:
        reason = "unknown_email" if user is None else ("inactive" if password_ok else "wrong_password")
        record("auth.login_failed", actor_id=user.id if user else None, resource_type="user",
               resource_id=user.id if user else None, details={"email": lookup_form(email), "reason": reason})
        metrics.count(metrics.auth_attempts, result="failure")
        db.session.commit()
        raise InvalidCredentials()
    if needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    record("auth.login", actor_id=user.id, resource_type="user", resource_id=user.id)
    metrics.count(metrics.auth_attempts, result="success")
    db.session.commit()
    return user


def _expires_in() -> int:
    return int(current_app.config["JWT_ACCESS_TOKEN_EXPIRES"].total_seconds())


def issue_tokens(user: User) -> dict[str, Any]:
    return {
        "access_token": create_access_token(identity=user),
        "refresh_token": create_refresh_token(identity=user),
        "token_type": "bearer",
        "expires_in": _expires_in(),
    }


def refresh_access_token(user: User) -> dict[str, Any]:
    return {"access_token": create_access_token(identity=user), "token_type": "bearer", "expires_in": _expires_in()}


def _revoke(payload: dict[str, Any]) -> None:
    if db.session.get(RevokedJwt, payload["jti"]) is None:
        expires_at = datetime.fromtimestamp(payload["exp"], UTC)
        db.session.add(RevokedJwt(jti=payload["jti"], user_id=uuid.UUID(payload["sub"]), expires_at=expires_at))


def logout(user: User, access_payload: dict[str, Any], refresh_token: str | None = None) -> None:
    """Revoke the presented access token and, when given, the user's refresh token."""
    refresh_payload = None
    if refresh_token:
        try:
            refresh_payload = decode_token(refresh_token)
        except (JWTExtendedException, PyJWTError):
            raise ValidationFailed({"refresh_token": ["Not a valid refresh token."]}) from None
        if refresh_payload.get("type") != "refresh" or refresh_payload.get("sub") != str(user.id):
            raise ValidationFailed({"refresh_token": ["Not a valid refresh token."]})
    _revoke(access_payload)
    if refresh_payload:
        _revoke(refresh_payload)
    record("auth.logout", actor_id=user.id, resource_type="user", resource_id=user.id)
    db.session.commit()


def update_profile(user: User, changes: dict[str, Any]) -> User:
    for field in ("full_name", "email_notifications"):
        if field in changes:
            setattr(user, field, changes[field])
    db.session.commit()
    return user


def change_password(user: User, current_password: str, new_password: str) -> None:
    if not verify_password(user.password_hash, current_password):
        record("auth.password_change_failed", actor_id=user.id, resource_type="user", resource_id=user.id)
        db.session.commit()
        raise Unauthorized("Current password is incorrect.")
    user.password_hash = hash_password(new_password)
    user.jwt_generation += 1
    record("auth.password_changed", actor_id=user.id, resource_type="user", resource_id=user.id)
    db.session.commit()


def deactivate_user(user: User, actor_id: uuid.UUID | None = None) -> User:
    """Locked out everywhere at once: JWTs (checked per request), access tokens and proxy sessions (the proxy
    follows `events.user_deactivated`)."""
    user.is_active = False
    record("user.deactivated", actor_id=actor_id, resource_type="user", resource_id=user.id)
    events.announce(events.user_deactivated, user=user)
    db.session.commit()
    return user


def reactivate_user(user: User, actor_id: uuid.UUID | None = None) -> User:
    """Let a deactivated user back in. JWTs issued before the deactivation stay dead (a new generation):
    the user signs in again. Their access tokens work again from the next request."""
    user.is_active = True
    user.jwt_generation += 1
    record("user.reactivated", actor_id=actor_id, resource_type="user", resource_id=user.id)
    events.announce(events.user_reactivated, user_id=user.id)  # the proxy drops the deactivation's tombstone
    db.session.commit()
    return user


def purge_expired_revocations(moment: datetime) -> int:
    """Revocations of JWTs that have expired anyway are no longer needed."""
    result = db.session.execute(sa.delete(RevokedJwt).where(RevokedJwt.expires_at < moment))
    db.session.commit()
    return result.rowcount or 0


def create_superuser(*, email: str, username: str, password: str) -> User:
    user = register_user(email=email, username=username, password=password)
    user.is_superuser = True
    record("admin.superuser_created", actor_id=None, resource_type="user", resource_id=user.id)
    db.session.commit()
    return user
