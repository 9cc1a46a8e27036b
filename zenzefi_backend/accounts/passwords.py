"""Argon2id password hashing (argon2-cffi)."""
from __future__ import annotations

from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from flask import current_app


@lru_cache(maxsize=4)
def _hasher(time_cost: int, memory_cost: int) -> PasswordHasher:
    return PasswordHasher(time_cost=time_cost, memory_cost=memory_cost, parallelism=1)


def _current_hasher() -> PasswordHasher:
    config = current_app.config
    return _hasher(config["PASSWORD_HASH_TIME_COST"], config["PASSWORD_HASH_MEMORY_KIB"])


@lru_cache(maxsize=4)
def _decoy_hash(time_cost: int, memory_cost: int) -> str:
    return _hasher(time_cost, memory_cost).hash("decoy password that matches nothing")


def hash_password(password: str) -> str:
    return _current_hasher().hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Constant work whether or not the account exists: an unknown user is checked against a decoy."""
    hasher = _current_hasher()
    if password_hash is None:
        password_hash = _decoy_hash(hasher.time_cost, hasher.memory_cost)
        candidate_exists = False
    else:
        candidate_exists = True
    try:
        return hasher.verify(password_hash, password) and candidate_exists
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    return _current_hasher().check_needs_rehash(password_hash)
