"""Canonical proxy paths and the `certificates_only` scope.

The upstream URL is always the fixed base plus the path exactly as the client sent it — but only after
decoding it until it is stable shows nothing that could climb out of, or sneak around, the scope:
no `.`/`..` segment, no `//`, no backslash, no NUL, and no encoded `/` at any decoding level.

The upstream is a Java servlet application, whose container reads more into a path than RFC 3986 does:
Tomcat and Jetty cut `;`-parameters off every segment (`..;x` is `..`), old Jetty decodes `%u002e`, and
Windows trims trailing dots and spaces off a name (`.. ` or `...` may end up `..` or empty). So a path is also
refused when it contains `;` in any encoding, a `%uXXXX` escape or a control character, and every segment made
of nothing but dots and spaces counts as a dot segment.
"""
from __future__ import annotations

import re
from urllib.parse import unquote

from werkzeug.routing import BaseConverter

PROXY_PREFIX = "/api/v1/proxy"
MAX_DECODE_ROUNDS = 8
_ENCODED_SEPARATOR = re.compile(r"%(2f|5c|00)", re.IGNORECASE)
# In the decoded path: a backslash, `;` (servlet path parameters), a control character, or `%uXXXX`.
_REFUSED = re.compile(r"[\\;\x00-\x1f\x7f]|%[uU][0-9a-fA-F]{4}")
# A segment of nothing but dots and spaces (looked for only when a segment starts with one of them).
_DOT_SEGMENT = re.compile(r"(?:^|/)[. ]+(?:/|$)")

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
    if _REFUSED.search(current) or "//" in current or current.startswith("/"):
        raise NotCanonical("separator, path parameter or control character")
    if (current[:1] in ". " or "/." in current or "/ " in current) and _DOT_SEGMENT.search(current):
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
