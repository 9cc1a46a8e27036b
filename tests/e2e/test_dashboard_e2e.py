"""The dashboards in a real browser (headless Chromium via Selenium) against gunicorn on real PostgreSQL + Redis.

The data is the hand-computed scenario of tests/analytics/scenario.py (real proxied traffic through a local
upstream on three UTC days, deposits, purchases, a refund, a referral bonus), made in this process with the
movable clock; gunicorn then serves the pages and the API from the same database. A person signs in, switches
the period, and sees charts drawn with the same numbers as the API's, in tables beside them.
"""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from tests.analytics.scenario import Scenario, build
from tests.e2e.harness import Gunicorn, real_services, wait_for

pytestmark = [pytest.mark.e2e, real_services]

WAIT_SECONDS = 20
TOKEN_KEY = "zenzefi.dashboard.access_token"
USER_CHARTS = {"chart-requests": ["requests", "sessions"], "chart-bytes": ["bytes_in", "bytes_out"],
               "chart-spend": ["spend_znc"]}
ADMIN_CHARTS = {"chart-money": ["revenue_znc", "refunds_znc", "deposits_znc"], "chart-users": ["dau", "new_users"],
                "chart-traffic": ["requests", "bytes"]}
USER_TABLES = {"table-requests": ["date", "requests", "sessions"],
               "table-bytes": ["date", "bytes_in", "bytes_out", "bytes"], "table-spend": ["date", "spend_znc"]}
ADMIN_TABLES = {"table-money": ["date", "revenue_znc", "refunds_znc", "deposits_znc", "referral_bonuses_znc",
                                "token_purchases", "bundle_purchases"],
                "table-users": ["date", "dau", "new_users"], "table-traffic": ["date", "requests", "bytes"]}
# Records every Content-Security-Policy violation of the page from now on (the policy allows no inline script).
WATCH_CSP = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation',
  (e) => window.__cspViolations.push(e.violatedDirective + ' ' + e.blockedURI));
"""
# Non-transparent pixels of a canvas: more than a few hundred means axes, bars and lines were drawn.
PAINTED_PIXELS = """
const canvas = document.getElementById(arguments[0]);
const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
let painted = 0;
for (let i = 3; i < pixels.length; i += 4) if (pixels[i] !== 0) painted++;
return painted;
"""
CHART_DATA = """
const chart = Chart.getChart(arguments[0]);
return chart ? {labels: chart.data.labels, datasets: chart.data.datasets.map((d) => d.data)} : null;
"""


@pytest.fixture
def proxy_env(request):
    """The in-process proxy environment of tests/proxy (an app on the same database, a local upstream)."""
    return request.getfixturevalue("env")


@pytest.fixture
def scenario(proxy_env) -> Scenario:
    return build(proxy_env)


@pytest.fixture
def server(services, scenario) -> Iterator[Gunicorn]:
    with Gunicorn(services.database_url, services.redis_url) as running:
        yield running


def wait(browser, condition, message: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, WAIT_SECONDS).until(lambda driver: condition(driver), message)


def visible(browser, element_id: str) -> bool:
    return browser.find_element("id", element_id).is_displayed()


def sign_in(browser, base: str, page: str, user: dict[str, Any]) -> None:
    browser.get(base + page)
    browser.execute_script(WATCH_CSP)
    wait(browser, lambda d: visible(d, "sign-in-panel"), "the sign-in form never showed")
    browser.find_element("id", "email").send_keys(user["email"])
    browser.find_element("id", "password").send_keys(user["password"])
    browser.find_element("css selector", "#sign-in button[type=submit]").click()


def wait_ready(browser, period: str) -> None:
    wait(browser, lambda d: d.execute_script(
        "const s = document.getElementById('dashboard');"
        "return !s.hidden && s.dataset.state === 'ready' && s.dataset.period === arguments[0];", period),
        f"the figures for {period} never appeared")


def api(server: Gunicorn, browser, path: str) -> tuple[int, Any]:
    """The API's answer with the JWT the page keeps in sessionStorage."""
    token = browser.execute_script(f"return sessionStorage.getItem('{TOKEN_KEY}');")
    assert token, "no JWT in sessionStorage"
    response = server.get(path, headers={"Authorization": f"Bearer {token}"})
    return response.status, response.json()


def table(browser, table_id: str) -> list[dict[str, str]]:
    return browser.execute_script("""
        return [...document.querySelectorAll('#' + arguments[0] + ' tbody tr')].map((row) =>
          Object.fromEntries([...row.cells].map((cell) => [cell.dataset.key, cell.textContent])));
    """, table_id)


def summary(browser) -> dict[str, str]:
    return browser.execute_script("""
        return Object.fromEntries([...document.querySelectorAll('#summary [data-field]')].map((cell) =>
          [cell.dataset.field, cell.querySelector('.value').textContent]));
    """)


def assert_page_shows(browser, figures: dict[str, Any], charts: dict[str, list[str]],
                      tables: dict[str, list[str]]) -> None:
    """Cards, charts and tables carry exactly the API's numbers; every chart is drawn."""
    shown = summary(browser)
    assert set(shown) <= set(figures), shown
    for name, text in shown.items():  # money and dates as the API's strings, counts as numbers
        assert (text if isinstance(figures[name], str) else float(text)) == figures[name], (name, text)
    dates = [day["date"] for day in figures["daily"]]
    for canvas_id, keys in charts.items():
        drawn = browser.execute_script(CHART_DATA, canvas_id)
        assert drawn == {"labels": dates,
                         "datasets": [[float(day[key]) for day in figures["daily"]] for key in keys]}, canvas_id
        assert browser.execute_script(PAINTED_PIXELS, canvas_id) > 500, f"{canvas_id} is blank"
    for table_id, keys in tables.items():
        assert table(browser, table_id) == [{key: str(day[key]) for key in keys} for day in figures["daily"]], table_id


def assert_no_csp_violation(browser) -> None:
    assert browser.execute_script("return window.__cspViolations;") == []


def test_a_customer_signs_in_switches_the_period_and_sees_the_apis_numbers(browser, server, scenario):
    base = f"http://127.0.0.1:{server.port}"
    alice = scenario.alice
    sign_in(browser, base, "/dashboard", alice)
    wait_ready(browser, "month")
    assert browser.find_element("id", "whoami").text == alice["username"]
    status, month = api(server, browser, "/api/v1/analytics/usage?period=month")
    assert status == 200 and len(month["daily"]) == 30 and month["total_requests"] == 7
    assert_page_shows(browser, month, USER_CHARTS, USER_TABLES)

    browser.find_element("css selector", "#period-switch [data-period=week]").click()
    wait_ready(browser, "week")
    week_button = browser.find_element("css selector", "#period-switch [data-period=week]")
    assert week_button.get_attribute("aria-pressed") == "true"
    _, week = api(server, browser, "/api/v1/analytics/usage?period=week")
    assert len(week["daily"]) == 7 and week["spend_znc"] == "110.00"
    assert_page_shows(browser, week, USER_CHARTS, USER_TABLES)

    browser.find_element("css selector", "#period-switch [data-period=day]").click()
    wait_ready(browser, "day")
    _, day = api(server, browser, "/api/v1/analytics/usage?period=day")
    assert_page_shows(browser, day, USER_CHARTS, USER_TABLES)

    _, tokens = api(server, browser, "/api/v1/tokens/my-tokens?active_only=false&limit=20")
    shown_tokens = table(browser, "table-tokens")
    assert [(row["token_hint"], row["status"]) for row in shown_tokens] == \
        [(token["token_hint"], token["status"]) for token in tokens["items"]]
    assert {row["status"] for row in shown_tokens} == {"ready", "active", "expired", "revoked"}
    _, transactions = api(server, browser, "/api/v1/currency/transactions?limit=10")
    assert [(row["transaction_type"], row["amount"]) for row in table(browser, "table-transactions")] == \
        [(entry["transaction_type"], entry["amount"]) for entry in transactions["items"]]

    # The JWT is in sessionStorage only: never in the address bar, a cookie or localStorage.
    token = browser.execute_script(f"return sessionStorage.getItem('{TOKEN_KEY}');")
    assert token not in browser.current_url
    assert browser.get_cookies() == []
    assert browser.execute_script("return window.localStorage.length;") == 0
    assert_no_csp_violation(browser)

    browser.find_element("id", "sign-out").click()
    wait(browser, lambda d: visible(d, "sign-in-panel"), "signing out did not show the sign-in form")
    assert browser.execute_script(f"return sessionStorage.getItem('{TOKEN_KEY}');") is None
    # Signing out also revokes the JWT (the page sends the logout without making the person wait for it).
    wait_for(lambda: server.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"}).status == 401,
             10, "the JWT still works after signing out")


def test_the_admin_dashboard_shows_superusers_the_global_figures_and_refuses_anyone_else(browser, server, scenario):
    base = f"http://127.0.0.1:{server.port}"
    sign_in(browser, base, "/admin/dashboard", scenario.bob)
    wait(browser, lambda d: visible(d, "refusal"), "a customer was not refused")
    assert "not a superuser" in browser.find_element("id", "refusal").text
    assert browser.find_element("id", "refused-user").text == scenario.bob["username"]
    assert not visible(browser, "dashboard")
    asked = browser.execute_script("return performance.getEntriesByType('resource').map((e) => e.name);")
    assert not [name for name in asked if "/analytics/admin/global" in name], asked
    assert browser.execute_script(  # no figure was ever filled in
        "return [...document.querySelectorAll('#summary [data-field]')].map((cell) => cell.textContent);"
    ) == [""] * 12

    browser.find_element("id", "sign-out").click()
    sign_in(browser, base, "/admin/dashboard", scenario.admin)
    wait_ready(browser, "month")
    assert not visible(browser, "refusal")
    status, month = api(server, browser, "/api/v1/analytics/admin/global?period=month")
    assert status == 200 and month["revenue_znc"] == "428.00" and month["mau"] == 2
    assert_page_shows(browser, month, ADMIN_CHARTS, ADMIN_TABLES)

    browser.find_element("css selector", "#period-switch [data-period=week]").click()
    wait_ready(browser, "week")
    _, week = api(server, browser, "/api/v1/analytics/admin/global?period=week")
    assert_page_shows(browser, week, ADMIN_CHARTS, ADMIN_TABLES)
    assert_no_csp_violation(browser)


def test_names_with_markup_are_shown_as_text(browser, server, scenario, proxy_env):
    from zenzefi_backend.accounts.models import User
    from zenzefi_backend.extensions import db

    hostile = "<script>window.__pwned = 1</script>"
    full_name = '<img src="x" onerror="window.__pwned = 2">'
    with proxy_env.ctx():
        db.session.execute(sa.update(User).where(User.id == uuid.UUID(scenario.alice["id"]))
                           .values(username=hostile, full_name=full_name))
        db.session.commit()
    base = f"http://127.0.0.1:{server.port}"
    sign_in(browser, base, "/dashboard", scenario.alice)
    wait_ready(browser, "month")
    whoami = browser.find_element("id", "whoami")
    assert whoami.text == f"{hostile} ({full_name})"
    assert browser.execute_script("return document.querySelectorAll('#whoami *').length;") == 0
    assert browser.execute_script("return window.__pwned === undefined;")
    assert_no_csp_violation(browser)
    # Still signed in (sessionStorage), the same tab opens the admin page: refused, the name shown verbatim.
    browser.get(base + "/admin/dashboard")
    wait(browser, lambda d: visible(d, "refusal"), "a customer was not refused")
    assert browser.find_element("id", "refused-user").text == hostile
    assert browser.execute_script("return window.__pwned === undefined;")
