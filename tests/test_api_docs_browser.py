"""/docs (Swagger UI) and /redoc (ReDoc) in a real headless Chromium against gunicorn: every operation is
rendered from our own static files, and no request leaves the browser for another host (the docs work offline)."""
from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.e2e.harness import Gunicorn
from tests.fixtures.browser import browser_unavailable_reason, console_errors, requests_sent

pytestmark = pytest.mark.skipif(browser_unavailable_reason() is not None,
                                reason=browser_unavailable_reason() or "")

LOGIN = "/api/v1/auth/login"
RENDER_TIMEOUT = 30
CSP_REFUSAL = re.compile(r"^\S+ - Loading the \w+ '(?P<url>[^']+)' violates the following Content Security Policy")


@pytest.fixture(scope="module")
def docs_server(app, backends) -> Iterator[Gunicorn]:
    """gunicorn (one worker) on 127.0.0.1 with this pass's migrated database and Redis (or the in-process stand-in)."""
    with Gunicorn(backends.database_url, backends.redis_url, workers=1) as server:
        yield server


@pytest.fixture(scope="module")
def operation_count(docs_server) -> int:
    spec = json.loads(docs_server.get("/openapi.json").body)
    return sum(1 for item in spec["paths"].values() for method in item if method != "parameters")


def origin(server: Gunicorn) -> str:
    return f"http://127.0.0.1:{server.port}"


def assert_nothing_left_for_other_hosts(browser, server: Gunicorn) -> list[str]:
    """No request went to another origin; gives back the other-origin URLs the page's policy refused."""
    sent = requests_sent(browser)
    ours = origin(server)
    assert f"{ours}/openapi.json" in {request.url for request in sent}
    elsewhere = [request for request in sent
                 if request.url.startswith(("http:", "https:", "ws:", "wss:")) and request.origin != ours]
    assert [request.url for request in elsewhere if request.blocked_by is None] == []
    return [request.url for request in elsewhere]


def test_swagger_ui_renders_every_operation_and_authorize_from_this_host(browser, docs_server, operation_count):
    browser.get(f"{origin(docs_server)}/docs")
    WebDriverWait(browser, RENDER_TIMEOUT).until(
        lambda driver: len(driver.find_elements(By.CSS_SELECTOR, ".opblock")) == operation_count)

    login = browser.find_element(By.CSS_SELECTOR, f'.opblock-post .opblock-summary-path[data-path="{LOGIN}"]')
    assert login.is_displayed()
    authorize = browser.find_element(By.CSS_SELECTOR, "button.authorize")
    assert authorize.text.strip() == "Authorize"
    authorize.click()
    dialog = WebDriverWait(browser, RENDER_TIMEOUT).until(
        lambda driver: driver.find_element(By.CSS_SELECTOR, ".dialog-ux .modal-ux-content"))
    for scheme in ("bearerAuth", "refreshBearerAuth", "accessTokenAuth"):
        assert scheme in dialog.text

    assert assert_nothing_left_for_other_hosts(browser, docs_server) == []
    assert console_errors(browser) == []


def test_redoc_renders_every_operation_from_this_host(browser, docs_server, operation_count):
    browser.get(f"{origin(docs_server)}/redoc")
    operations = '[data-section-id*="/paths/"]'
    WebDriverWait(browser, RENDER_TIMEOUT).until(
        lambda driver: len(driver.find_elements(By.CSS_SELECTOR, operations)) == operation_count)

    login = browser.find_element(By.CSS_SELECTOR, '[data-section-id="tag/auth/paths/~1api~1v1~1auth~1login/post"]')
    assert "Exchange e-mail and password for an access and a refresh token" in login.text
    assert browser.find_element(By.CSS_SELECTOR, '[data-item-id="tag/auth/paths/~1api~1v1~1auth~1login/post"]')

    # ReDoc always draws its maker's logo from cdn.redoc.ly: the page's policy refuses it before it is sent.
    refused = assert_nothing_left_for_other_hosts(browser, docs_server)
    errors = console_errors(browser)
    assert sorted(CSP_REFUSAL.match(error)["url"] if CSP_REFUSAL.match(error) else error
                  for error in errors) == sorted(refused)
