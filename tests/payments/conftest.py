"""Fixtures of the payment tests (helpers live in `helpers.py`)."""
from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from zenzefi_backend import clock

from .helpers import Provider, top_up


@pytest.fixture
def provider(app, client) -> Provider:
    return Provider(app, client)


@pytest.fixture
def user(accounts) -> dict:
    return accounts.signed_in()


@pytest.fixture
def payment(client, user) -> dict:
    return top_up(client, user)


@pytest.fixture
def frozen_clock(monkeypatch) -> Iterator[datetime]:
    """Stop `zenzefi_backend.clock.now()` at a whole second (+0.5 s), so tolerance edges are exact."""
    instant = datetime.fromtimestamp(int(datetime.now(UTC).timestamp()) + 0.5, UTC)

    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return instant

    monkeypatch.setattr(clock, "datetime", Frozen)
    yield instant


@pytest.fixture
def mock_payments_disabled(app) -> Iterator[None]:
    previous = app.config["MOCK_PAYMENTS_ENABLED"]
    app.config["MOCK_PAYMENTS_ENABLED"] = False
    try:
        yield
    finally:
        app.config["MOCK_PAYMENTS_ENABLED"] = previous
