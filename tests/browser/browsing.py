"""Chromium driven by Playwright: launching it, opening pages that record their errors, and page actions."""
import shutil
from pathlib import Path

import pytest

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000


def open_page(browser, url, wait_connected=True, **context_options):
    """A page in a fresh context (its own cookies) that records page errors, HTTP errors and Socket.IO frames.

    `context_options` go to Playwright's new_context (a phone's viewport, touch, a dark colour scheme).
    """
    context = browser.new_context(**{"viewport": {"width": 1200, "height": 760}, **context_options})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.on("dialog", lambda dialog: (page.errors.append(f"dialog: {dialog.message}"), dialog.dismiss()))
    page.socket_frames = []  # Socket.IO frames both ways, e.g. '42["cancel",{"id":"…"}]'

    def record(frame):  # Playwright wants a Python function, not a bound built-in
        page.socket_frames.append(frame)

    page.on("websocket", lambda ws: (ws.on("framesent", record), ws.on("framereceived", record)))
    page.on("response", lambda response: response.status >= 400
            and page.errors.append(f"HTTP {response.status} for {response.url}"))
    page.goto(url)
    if wait_connected:
        page.locator("#status .status-connection[data-state=connected]").wait_for()
    return page


def set_settings(page, values):
    """Move the settings panel's controls as a user would, firing their input events."""
    for name, value in values.items():
        page.eval_on_selector(f"#setting-{name}", "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }",
                              value)


def write(page, text):
    editor = page.get_by_role("textbox", name="Document")
    editor.click()
    editor.press_sequentially(text)
    return editor


def options(page):
    """The suggestion options (the settings' <select> has options of its own)."""
    return page.get_by_role("listbox", name="Suggestions").get_by_role("option")


def option_texts(page):
    """The options as text (the popup shows each line break as ↵ before it)."""
    return [text.replace("\u21b5\n", "\n") for text in options(page).locator(".option-text").all_text_contents()]


def wait_until_done(page):
    page.wait_for_function("() => document.querySelectorAll('#suggestions .option.streaming').length === 0")




AXE_SOURCE = Path(__file__).resolve().parents[2] / "node_modules" / "axe-core" / "axe.min.js"


def axe_violations(page):
    """axe-core's default rules on the page as it is now: [{id, impact, nodes: [target, …]}, …].

    axe comes from npm (a dev dependency, never served to users). The page's CSP refuses inline
    scripts (Playwright's add_script_tag), so it is evaluated through the DevTools protocol.
    """
    if not page.evaluate("() => Boolean(window.axe)"):
        page.evaluate(AXE_SOURCE.read_text())
    return page.evaluate("""async () => (await axe.run(document)).violations.map(v => ({
        id: v.id, impact: v.impact, nodes: v.nodes.map(n => n.target.join(' '))}))""")


ADMIN_TOKEN = "teacher-token-for-browser-tests"


@pytest.fixture(scope="module")
def admin_server(embedded):
    """The embedded model with a known admin token, so that a test can open the dashboard too."""
    from conftest import RunningServer

    server = RunningServer("embedded", args=["--admin-token", ADMIN_TOKEN]).wait_ready()
    yield server
    server.stop()


def sign_in_as_teacher(page, url):
    """Open the dashboard of the server at `url` on `page` and wait for its first figures."""
    page.goto(url.rstrip("/") + "/admin")
    page.get_by_label("Admin token").fill(ADMIN_TOKEN)
    page.get_by_role("button", name="Sign in").click()
    page.locator("body[data-loaded=true]").wait_for()
