"""Canonical proxy paths and the `certificates_only` scope.

The upstream URL is always the fixed base plus the path exactly as the client sent it — but only after
decoding it until it is stable shows nothing that could climb out of, or sneak around, the scope:
no `.`/`..` segment, no `//`, no backslash, no NUL, and no encoded `/` at any decoding level.
"""
from __future__ import annotations

import re
from urllib.parse import unquote

from werkzeug.routing import BaseConverter

PROXY_PREFIX = "/api/v1/proxy"
MAX_DECODE_ROUNDS = 8
_ENCODED_SEPARATOR = re.compile(r"%(2f|5c|00)", re.IGNORECASE)

CERTIFICATES_ONLY_PREFIXES = (
    "certificates/filter",
    "certificates/details",
    "certificates/export",
    "certificates/import",
    "certificates/remove",
    "certificates/restore",
    "certificates/activeForTesting",
    "certificates/update",
    "certificates/checkSystemIntegrityReport",
    "certificates/checkSystemIntegrityLog",
    "certificates/checkSystemIntegrityLogExistance",
    "configurations/certificatesColumnOrder",
    "configurations/certificatesColumnVisibility",
)


class NotCanonical(ValueError):
    """The path could reach somewhere other than it seems to."""


def raw_subpath(raw_uri: str) -> str:
    """The path after `/api/v1/proxy/`, still percent-encoded as sent, without the query string."""
    path = raw_uri.split("?", 1)[0]
    if "://" in path:  # absolute-form request target: keep only the path
        path = "/" + path.split("://", 1)[1].partition("/")[2]
    if path == PROXY_PREFIX:
        return ""
    if not path.startswith(PROXY_PREFIX + "/"):
        raise NotCanonical("not a proxy path")
    return path[len(PROXY_PREFIX) + 1:]


def canonical(subpath: str) -> str:
    """The fully decoded path, or NotCanonical. `subpath` is the raw, still-encoded path."""
    current = subpath
    for _ in range(MAX_DECODE_ROUNDS):
        if _ENCODED_SEPARATOR.search(current):
            raise NotCanonical("encoded separator")
        try:
            decoded = unquote(current, errors="strict")
        except UnicodeDecodeError:
            raise NotCanonical("not UTF-8") from None
        if decoded == current:
            break
        current = decoded
    else:
        raise NotCanonical("too deeply encoded")
    if "\\" in current or "\x00" in current or "//" in current or current.startswith("/"):
        raise NotCanonical("separator")
    if any(segment in (".", "..") for segment in current.split("/")):
        raise NotCanonical("dot segment")
    return current


def allowed_for_certificates_only(path: str) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in CERTIFICATES_ONLY_PREFIXES)


class AnyPathConverter(BaseConverter):
    """Matches any rest of the path, `//` included, so such requests reach our checks (and their 400)
    instead of Werkzeug's slash-merging redirect."""

    regex = ".*"
    part_isolating = False
    weight = 200
