"""Analytics-test helpers: the two endpoints as a client calls them, and the cache they fill."""
from __future__ import annotations

from typing import Any

from flask import Flask
from flask.testing import FlaskClient

USAGE = "/api/v1/analytics/usage"
GLOBAL = "/api/v1/analytics/admin/global"
PERIODS = ("day", "week", "month")


def usage(client: FlaskClient, user: dict, period: str = "month") -> dict[str, Any]:
    response = client.get(USAGE, query_string={"period": period}, headers=user["headers"])
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def global_figures(client: FlaskClient, admin: dict, period: str = "month") -> dict[str, Any]:
    response = client.get(GLOBAL, query_string={"period": period}, headers=admin["headers"])
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def forget_cached_figures(app: Flask) -> int:
    """Drop every cached analytics answer (so the next call computes again); how many there were."""
    from zenzefi_backend.analytics.cache import PREFIX
    from zenzefi_backend.extensions import get_redis

    with app.app_context():
        client = get_redis()
        keys = list(client.scan_iter(match=PREFIX + "*"))
        if keys:
            client.delete(*keys)
    return len(keys)
