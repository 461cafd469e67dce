"""Accessibility in Chromium: axe-core on every state of the editor and the dashboard, and the keyboard."""
import json

import pytest
from browsing import axe_violations, open_page, set_settings, wait_until_done, write
from conftest import ARTIFACTS, RunningServer

pytestmark = pytest.mark.browser

ADMIN = "teacher-token-for-accessibility-tests"
GREEDY = {"temperature": "0", "stop_at": "length", "length": "6"}


@pytest.fixture(scope="module")
def server(embedded):
    """The embedded model with a known admin token, so that the dashboard can be checked too."""
    server = RunningServer("embedded", args=["--admin-token", ADMIN]).wait_ready()
    yield server
    server.stop()


def options_open(page):
    set_settings(page, GREEDY)
    write(page, "The best thing about summer is").press("Tab")
    wait_until_done(page)


def settings_open(page):
    page.get_by_role("button", name="Show the next-token chart").click()
    write(page, "The capital of France is")
    page.locator("#distribution .candidate").first.wait_for()


def surprise_view(page):
    write(page, "The cat sat on the mat. Purple algebra swims loudly beneath Tuesday.")
    page.get_by_role("button", name="Surprise").click()
    page.locator("#lens .token").first.wait_for()


def menu_open(page):
    page.locator("#examples-menu summary").click()
    page.locator("#examples-menu .example").first.wait_for()


def dashboard(page):
    page.goto(page.url.rstrip("/") + "/admin")
    page.get_by_label("Admin token").fill(ADMIN)
    page.get_by_role("button", name="Sign in").click()
    page.locator("body[data-loaded=true]").wait_for()


BEFORE = pytest.mark.xfail(strict=True, reason="issue 22: the editor as it was (the 'before' counts)")
STATES = [pytest.param(state, marks=BEFORE) for state in (options_open, settings_open, surprise_view, menu_open)]
STATES.append(dashboard)


@pytest.mark.parametrize("state", STATES, ids=lambda state: state.__name__)
def test_axe_finds_nothing_critical_or_serious(browser, server, state):
    page = open_page(browser, server.url)
    state(page)
    violations = axe_violations(page)
    (ARTIFACTS / "axe").mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "axe" / f"{state.__name__}.json").write_text(json.dumps(violations, indent=1))
    assert page.errors == []
    page.context.close()
    grave = [v for v in violations if v["impact"] in ("critical", "serious")]
    assert grave == [], grave
