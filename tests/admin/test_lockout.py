"""Admin changes to a user reach the proxy on the very next request: deactivation (JWT, proxied request and
`/proxy/status` all 401), reactivation and plan changes (the proxy's cached copy of the user is dropped)."""
from __future__ import annotations

from tests.fixtures.proxy import assert_error, assert_locked_out

from .helpers import user_path


def _patch(env, admin: dict, user_id: str, **body):
    return env.client.patch(user_path(user_id), json=body, headers=admin["headers"])


def test_admin_deactivation_is_401_everywhere_on_the_very_next_request(env, token):
    admin = env.accounts.signed_in(superuser=True)
    owner = token["user"]
    for _ in range(3):  # warm: token, owner and device holder all cached in Redis
        assert env.get("certificates/filter", token=token).status_code == 200
    assert env.status(token).status_code == 200
    assert env.client.get("/api/v1/users/me", headers=owner["headers"]).status_code == 200

    response = _patch(env, admin, owner["id"], is_active=False)
    assert response.status_code == 200 and response.get_json()["is_active"] is False
    assert_error(env.client.get("/api/v1/users/me", headers=owner["headers"]), 401)
    assert_locked_out(env, token, "deactivated")


def test_reactivation_lets_the_tokens_work_again_on_the_next_request(env, token):
    admin = env.accounts.signed_in(superuser=True)
    owner = token["user"]
    assert env.get("certificates/filter", token=token).status_code == 200
    assert _patch(env, admin, owner["id"], is_active=False).status_code == 200
    assert_error(env.get("certificates/filter", token=token), 401)
    assert_error(env.status(token), 401)
    assert _patch(env, admin, owner["id"], is_active=True).status_code == 200
    assert env.status(token).status_code == 200
    assert env.get("certificates/filter", token=token).status_code == 200


def test_a_plan_change_reaches_the_proxy_rate_limit_on_the_next_request(make_env, fresh_rate_window):
    env = make_env(RATELIMIT_PROXY_FREE=2, RATELIMIT_PROXY_PREMIUM=50)
    admin = env.accounts.signed_in(superuser=True)
    token = env.buy()
    assert env.get("certificates/filter", token=token).status_code == 200
    assert env.get("certificates/filter", token=token).status_code == 200
    assert_error(env.get("certificates/filter", token=token), 429)  # free: 2 a minute, the plan cached
    assert _patch(env, admin, token["user"]["id"], plan="premium").status_code == 200
    assert env.get("certificates/filter", token=token).status_code == 200
    assert _patch(env, admin, token["user"]["id"], plan="free").status_code == 200
    assert_error(env.get("certificates/filter", token=token), 429)
