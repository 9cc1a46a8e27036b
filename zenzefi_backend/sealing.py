"""Encryption at rest for what must be read back later (stored responses, webhook secrets, e-mail bodies).

Fernet (AES-CBC + HMAC) with a key derived from SECRET_KEY and a purpose label, so a value sealed for one
purpose cannot be opened as another. Rotating SECRET_KEY makes earlier sealed values unreadable.
"""
from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken
from flask import current_app


class Unreadable(Exception):
    """The sealed value cannot be opened with the current SECRET_KEY."""


def _cipher(purpose: str) -> Fernet:
    key = hashlib.sha256(f"zenzefi {purpose}\0".encode() + current_app.config["SECRET_KEY"].encode()).digest()
    return Fernet(base64.urlsafe_b64encode(key))


def seal(purpose: str, plain: bytes) -> str:
    return _cipher(purpose).encrypt(plain).decode()


def unseal(purpose: str, sealed: str) -> bytes:
    try:
        return _cipher(purpose).decrypt(sealed.encode())
    except InvalidToken:
        raise Unreadable(purpose) from None
