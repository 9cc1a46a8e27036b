"""Canonical paths (400 for anything that could climb out of or sneak around a scope) and the
`certificates_only` allow-list, matched on whole segments. Asserted on what the upstream received."""
from __future__ import annotations

import contextlib
from urllib.parse import unquote

import pytest

from tests.fixtures.proxy import assert_error, flask_route_only
from zenzefi_backend.proxy.paths import CERTIFICATES_ONLY_PREFIXES

SPEC_PREFIXES = (
    "certificates/filter", "certificates/details", "certificates/export", "certificates/import",
    "certificates/remove", "certificates/restore", "certificates/activeForTesting", "certificates/update",
    "certificates/checkSystemIntegrityReport", "certificates/checkSystemIntegrityLog",
    "certificates/checkSystemIntegrityLogExistance", "configurations/certificatesColumnOrder",
    "configurations/certificatesColumnVisibility",
)

TRAVERSALS = {
    "dot-dot": "certificates/details/../../admin",
    "dot": "certificates/./details",
    "trailing-dot-dot": "certificates/details/..",
    "trailing-dot": "certificates/details/.",
    "only-dot-dot": "..",
    "only-dot": ".",
    "encoded-dot-dot-lower": "certificates/details/%2e%2e/%2e%2e/admin",
    "encoded-dot-dot-upper": "certificates/details/%2E%2E/%2E%2E/admin",
    "encoded-dot-dot-mixed-case": "certificates/details/%2E%2e/admin",
    "half-encoded-dot-dot": "certificates/details/.%2e/admin",
    "encoded-dot": "certificates/%2e/details",
    "double-encoded-dot-dot": "certificates/details/%252e%252e/%252e%252e/admin",
    "triple-encoded-dot-dot": "certificates/details/%25252e%25252e/admin",
    "deeply-encoded-dot-dot": "certificates/details/%2525252525252525252e%2e/admin",
    "encoded-slash": "certificates%2fdetails",
    "encoded-slash-upper": "certificates%2Fdetails",
    "double-encoded-slash": "certificates%252fdetails",
    "triple-encoded-slash": "certificates%25252fdetails",
    "encoded-slash-dot-dot": "certificates/details%2f..%2f..%2fadmin",
    "mixed": "certificates/details/..%2f..%2fadmin",
    "double-encoded-mixed": "certificates/details/..%252f..%252fadmin",
    "backslash": "certificates/details\\..\\..\\admin",
    "backslash-only": "certificates\\details",
    "encoded-backslash": "certificates/details/%5c..%5c..%5cadmin",
    "encoded-backslash-upper": "certificates/details%5C..",
    "double-encoded-backslash": "certificates/details/%255c..%255cadmin",
    "double-slash": "certificates//details",
    "trailing-double-slash": "certificates/details//",
    "encoded-double-slash": "certificates/%2f/details",
    "nul": "certificates/details/%00",
    "nul-before-suffix": "certificates/details%00/../../admin",
    "double-encoded-nul": "certificates/details/%2500",
    "overlong-utf8-dot": "certificates/details/%c0%ae%c0%ae/admin",
    "overlong-utf8-dot-3-bytes": "certificates/details/%e0%80%ae%e0%80%ae/admin",
    "overlong-utf8-slash": "certificates/details%c0%af..%c0%afadmin",
    "invalid-utf8": "certificates/details/%ff",
}

# Servlet containers (Tomcat, Jetty) cut `;`-parameters off each segment before resolving dot segments, so
# `..;` is `..` upstream; `;` is refused in every encoding (see the README's proxy decisions).
PATH_PARAMETERS = {
    "dot-dot-semicolon": "certificates/filter/..;/..;/admin",
    "encoded-dot-dot-semicolon": "certificates/filter/%2e%2e;/%2e%2e;/admin",
    "dot-dot-encoded-semicolon": "certificates/filter/..%3b/..%3b/admin",
    "dot-dot-encoded-semicolon-upper": "certificates/filter/..%3B/admin",
    "dot-dot-double-encoded-semicolon": "certificates/filter/..%253b/admin",
    "dot-dot-session-parameter": "certificates/filter/..;jsessionid=1/..;jsessionid=1/admin",
    "dot-semicolon": "certificates/filter/.;/x",
    "half-encoded-dot-dot-semicolon": "certificates/filter/.%2E;x=1/admin",
    "semicolon-on-the-prefix": "certificates/filter;jsessionid=1",
    "semicolon-before-the-prefix": "certificates;x=1/filter",
    "semicolon-in-a-segment": "certificates/filter/a;b",
    "encoded-semicolon-in-a-segment": "certificates/filter/a%3bb",
}

# Other ways a servlet container, Windows or an old Jetty may read a segment as `.`/`..`.
OTHER_DIFFERENTIALS = {
    "jetty-u-escape-dot-dot": "certificates/filter/%u002e%u002e/admin",
    "jetty-u-escape-upper": "certificates/filter/%U002E%U002E/admin",
    "jetty-u-escape-slash": "certificates/filter%u002f..%u002fadmin",
    "double-encoded-u-escape": "certificates/filter/%25u002e%25u002e/admin",
    "dot-dot-trailing-space": "certificates/filter/..%20/admin",
    "dot-dot-leading-space": "certificates/filter/%20../admin",
    "three-dots": "certificates/filter/.../admin",
    "dot-dot-trailing-dot-space": "certificates/filter/.. ./admin",
    "only-spaces": "certificates/filter/%20%20/admin",
    "dot-dot-tab": "certificates/filter/..%09/admin",
    "carriage-return-line-feed": "certificates/filter/%0d%0aX-Injected:%201",
    "delete-character": "certificates/filter/%7f",
    "double-encoded-control": "certificates/filter/..%2509/admin",
}


@pytest.fixture
def certificates_token(env) -> dict:
    return env.buy(scope="certificates_only")


LEADING_SLASHES = {
    "leading-slash": "/certificates/details",
    "leading-slash-dot-dot": "/../admin",
    "leading-slash-encoded-dot-dot": "/%2e%2e/admin",
}
TRAVERSAL_CASES = [pytest.param(path, id=name) for cases in (TRAVERSALS, LEADING_SLASHES, PATH_PARAMETERS,
                                                               OTHER_DIFFERENTIALS) for name, path in cases.items()]


@pytest.mark.parametrize("scope", ["certificates_only", "full"])
@pytest.mark.parametrize("path", TRAVERSAL_CASES)
def test_traversal_in_any_encoding_is_400_and_never_reaches_the_upstream(env, scope, path):
    token = env.buy(scope=scope)
    assert_error(env.get(path, token=token), 400)
    assert_error(env.call("POST", path, token=token, data=b"x"), 400)
    assert env.upstream.log == []
    assert env.token_row(token).activated_at is None


@pytest.mark.parametrize("via", ["fast path", "Flask route"])
@pytest.mark.parametrize("path", [pytest.param(path, id=name) for name, path in PATH_PARAMETERS.items()])
def test_path_parameters_are_refused_on_both_serving_paths_and_nothing_reaches_the_upstream(env, certificates_token,
                                                                                            via, path):
    """`/certificates/filter/..;/..;/admin` is `/admin` to Tomcat: refused before any byte goes upstream, whether
    the WSGI fast path or Flask's route (requests with an `Origin`, or without the fast path) serves it."""
    assert env.get("certificates/filter", token=certificates_token).status_code == 200  # warm: Redis decides
    env.upstream.clear()
    with flask_route_only(env) if via == "Flask route" else contextlib.nullcontext():
        body = assert_error(env.get(path, token=certificates_token), 400)
        assert_error(env.call("PUT", path, token=certificates_token, data=b"x"), 400)
    assert "';'" in body["message"]
    assert env.upstream.log == []


def test_a_semicolon_in_the_query_string_is_only_a_query(env, certificates_token):
    response = env.get("certificates/filter?sort=a;b&x=..;", token=certificates_token)
    assert response.status_code == 200
    assert env.upstream.last().target == "/certificates/filter?sort=a;b&x=..;"


def test_traversal_in_the_query_string_is_only_a_query(env, certificates_token):
    """`?` ends the path: what follows goes upstream as the query, the path stays in scope."""
    response = env.get("certificates/filter?next=/../admin&x=%2E%2E%2Fadmin", token=certificates_token)
    assert response.status_code == 200
    received = env.upstream.last()
    assert received.path == "/certificates/filter"
    assert unquote(received.query) == "next=/../admin&x=../admin"


@pytest.mark.parametrize("device", [None, "device-A-0123456789"], ids=["no-device", "device"])
def test_a_double_slash_after_the_prefix_is_checked_in_order_not_redirected(env, device):
    """`/api/v1/proxy//x`: our JSON error in check order (403 without device, else 401 without token)."""
    response = env.get("/x", token=None, device=device)
    assert response.status_code != 308 and "Location" not in response.headers
    assert_error(response, 403 if device is None else 401)
    assert env.upstream.log == []


@pytest.mark.parametrize("path, upstream_path", [
    ("certificates/details/%41bc", "/certificates/details/Abc"),
    ("certificates/details/a%20b", "/certificates/details/a%20b"),
    ("certificates/details/..abc", "/certificates/details/..abc"),
    ("certificates/details/abc..", "/certificates/details/abc.."),
    ("certificates/details/.hidden", "/certificates/details/.hidden"),
    ("certificates/details/a.b.c", "/certificates/details/a.b.c"),
    ("certificates/details/%25", "/certificates/details/%25"),
    ("certificates/details/u002e", "/certificates/details/u002e"),
])
def test_harmless_encodings_stay_inside_the_scope(env, certificates_token, path, upstream_path):
    response = env.get(path, token=certificates_token)
    assert response.status_code == 200
    assert env.upstream.last().path == upstream_path


def test_the_allow_list_is_exactly_the_spec(env):
    assert tuple(CERTIFICATES_ONLY_PREFIXES) == SPEC_PREFIXES


@pytest.mark.parametrize("prefix", SPEC_PREFIXES)
def test_certificates_only_allows_each_prefix_on_whole_segments(env, certificates_token, prefix):
    for allowed in (prefix, f"{prefix}/123", f"{prefix}/a/b/c", f"{prefix}?page=2"):
        response = env.get(allowed, token=certificates_token)
        assert response.status_code == 200, (allowed, response.get_json())
        assert env.upstream.last().target == "/" + allowed
    env.upstream.clear()
    parent = prefix.rsplit("/", 1)[0]
    for denied in (f"{prefix}X", f"{prefix}-x", f"{prefix}.json", f"{prefix}%2Fx", parent, f"{parent}/other",
                   prefix.upper(), "x/" + prefix):
        response = env.get(denied, token=certificates_token)
        assert response.status_code in (400, 403), (denied, response.status_code)
        assert_error(response, response.status_code)
    assert env.upstream.log == []


def test_certificates_only_denies_the_filter_lookalike_but_allows_filter(env, certificates_token):
    assert_error(env.get("certificates/filterX", token=certificates_token), 403)
    assert env.upstream.log == []
    assert env.get("certificates/filter", token=certificates_token).status_code == 200
    assert env.get("certificates/details/123", token=certificates_token).status_code == 200
    assert [r.path for r in env.upstream.log] == ["/certificates/filter", "/certificates/details/123"]


@pytest.mark.parametrize("path", ["", "admin", "certificates", "configurations", "index.html", "api/users"],
                         ids=["root", "admin", "certificates", "configurations", "index", "api"])
def test_certificates_only_denies_everything_else(env, certificates_token, path):
    assert_error(env.get(path, token=certificates_token), 403)
    assert env.upstream.log == []


def test_full_scope_reaches_the_root_and_any_path(env, token):
    assert env.get("", token=token).status_code == 200
    assert env.get("admin/users?x=1", token=token).status_code == 200
    assert [r.target for r in env.upstream.log] == ["/", "/admin/users?x=1"]
