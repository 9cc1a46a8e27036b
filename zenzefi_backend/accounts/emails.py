"""The one form an e-mail address is stored and compared in (registration, login, gifts, CLI, admin search).

`canonical_email` is what `email-validator` returns as the normalised address (Unicode NFC, the domain mapped
through IDNA/UTS 46, so `x@ｅｘａｍｐｌｅ.com`, `x@EXAMPLE.com` and `x@example.com` are one address, and so are a
domain's Unicode and `xn--` forms), lower-cased as a whole (SPEC §3.1). A local part that would change under
Unicode compatibility normalisation (NFKC: full-width letters, ligatures, superscripts) is refused rather than
rewritten: we never mail an address other than the one typed, and no two accounts differ only by such forms.
"""
from __future__ import annotations

import unicodedata

from email_validator import EmailNotValidError, validate_email


class InvalidEmail(ValueError):
    """Not an address we accept; the message says why."""


def canonical_email(value: str) -> str:
    try:
        normalised = validate_email(value.strip(), check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise InvalidEmail(str(exc)) from None
    local = normalised.rpartition("@")[0]
    if unicodedata.normalize("NFKC", local) != local:
        raise InvalidEmail("The part before the @ contains compatibility characters (such as full-width letters "
                           "or ligatures); type it with ordinary characters.")
    return unicodedata.normalize("NFC", normalised.lower())


def lookup_form(value: str) -> str:
    """The key to look an address up by (login, the failed-login limit, CLI): its canonical form, or for input
    that is not a valid address (which no account can have) the stripped, lower-cased text."""
    try:
        return canonical_email(value)
    except InvalidEmail:
        return value.strip().lower()


def search_form(text: str) -> str:
    """A search needle compared with canonical addresses: compatibility forms folded, lower-cased."""
    return unicodedata.normalize("NFKC", text).strip().lower()
