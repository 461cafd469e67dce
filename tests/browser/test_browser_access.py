"""Accessibility in Chromium: axe-core on every state of the editor and the dashboard, and the keyboard."""
import json

import pytest
from browsing import admin_server as server  # noqa: F401 (a fixture)
from browsing import axe_violations, open_page, set_settings, sign_in_as_teacher, wait_until_done, write
from conftest import ARTIFACTS

pytestmark = pytest.mark.browser

GREEDY = {"temperature": "0", "stop_at": "length", "length": "6"}


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
    page.get_by_role("button", name="Examples").click()
    page.locator("#examples-menu .example").first.wait_for()


def dashboard(page):
    sign_in_as_teacher(page, page.url)


STATES = [options_open, settings_open, surprise_view, menu_open, dashboard]


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("state", STATES, ids=lambda state: state.__name__)
def test_axe_finds_nothing_critical_or_serious(browser, server, state, scheme):
    page = open_page(browser, server.url, color_scheme=scheme)
    state(page)
    violations = axe_violations(page)
    (ARTIFACTS / "axe").mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "axe" / f"{state.__name__}-{scheme}.json").write_text(json.dumps(violations, indent=1))
    assert page.errors == []
    page.context.close()
    grave = [v for v in violations if v["impact"] in ("critical", "serious")]
    assert grave == [], grave


@pytest.fixture
def page(browser, server):
    page = open_page(browser, server.url)
    yield page
    assert page.errors == []
    page.context.close()


def focused(page):
    """Where the focus is: the element's id (or tag), and whether it comes before or after the editor."""
    return page.evaluate("""() => {
        const el = document.activeElement, editor = document.getElementById('editor');
        const after = el !== editor && Boolean(editor.compareDocumentPosition(el) & Node.DOCUMENT_POSITION_FOLLOWING);
        return {id: el.id || el.tagName.toLowerCase(), after, before: el !== editor && !after};
    }""")


def test_escape_then_tab_leaves_the_editor_both_ways_and_tab_alone_writes(page):
    editor = page.get_by_role("textbox", name="Document")
    assert focused(page)["id"] == "editor", "the editor has the focus on load"
    editor.press_sequentially("Hello there")
    editor.press("Escape")
    editor.press("Tab")
    assert focused(page)["after"], focused(page)
    assert page.locator("#suggestions").is_hidden(), "leaving asks the model nothing"
    page.keyboard.press("Shift+Tab")
    assert focused(page)["id"] == "editor", "Shift+Tab comes back"
    page.keyboard.press("Escape")
    page.keyboard.press("Shift+Tab")
    assert focused(page)["before"], focused(page)
    page.keyboard.press("Tab")
    assert focused(page)["id"] == "editor"
    page.keyboard.press("Escape")
    page.keyboard.press("!")  # any key between Esc and Tab keeps Tab for the model
    page.keyboard.press("Tab")
    assert focused(page)["id"] == "editor"
    listbox = page.get_by_role("listbox", name="Suggestions")
    listbox.wait_for()
    page.keyboard.press("Escape")  # with options open Esc closes them; a second Esc, then Tab, leaves
    listbox.wait_for(state="hidden")
    page.keyboard.press("Tab")
    listbox.wait_for()
    page.keyboard.press("Escape")
    page.keyboard.press("Escape")
    page.keyboard.press("Tab")
    assert focused(page)["after"]
    assert listbox.is_hidden()
    assert "Esc then Tab leaves the editor" in page.locator("#key-hint").text_content()
    assert editor.get_attribute("aria-describedby") == "key-hint"


def test_every_control_and_the_editor_show_a_focus_ring(page):
    def ring(selector):
        return page.eval_on_selector(selector, "el => { const s = getComputedStyle(el); "
                                               "return s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) >= 2; }")
    assert ring("#editor")
    page.keyboard.press("Escape")
    page.keyboard.press("Tab")
    assert ring(":focus")
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Escape")
    page.keyboard.press("Shift+Tab")
    assert ring(":focus")


def test_the_options_are_a_listbox_of_options_named_by_the_editor_and_announced_once(page):
    set_settings(page, GREEDY)
    editor = write(page, "The best thing about summer is")
    assert editor.get_attribute("aria-controls") == "suggestion-list"
    assert editor.get_attribute("aria-autocomplete") == "list"
    editor.press("Tab")
    wait_until_done(page)
    roles = page.eval_on_selector("[role=listbox]", "el => [...el.children].map(c => c.getAttribute('role'))")
    assert roles == ["option"] * 3
    selected = page.get_by_role("listbox", name="Suggestions").get_by_role("option", selected=True)
    assert editor.get_attribute("aria-activedescendant") == selected.get_attribute("id") == "suggestion-0"
    editor.press("ArrowDown")
    assert editor.get_attribute("aria-activedescendant") == "suggestion-1"
    announcer = page.locator("#announcer")
    page.wait_for_function("() => document.getElementById('announcer').textContent === '3 suggestions ready'")
    assert announcer.get_attribute("aria-live") == "polite"
    assert page.locator("#status [aria-live], #status [role=status]").count() == 3, \
        "connection, messages and the announcer; not the timings"
    assert page.locator("#status").get_attribute("role") is None
    editor.press("Escape")
    assert editor.get_attribute("aria-activedescendant") is None


def test_menus_open_with_the_keyboard_move_with_arrows_and_close_with_escape(page):
    button = page.get_by_role("button", name="Examples")
    button.focus()
    page.keyboard.press("Enter")
    menu = page.get_by_role("menu", name="Examples")
    menu.wait_for()
    assert button.get_attribute("aria-expanded") == "true"
    items = menu.get_by_role("menuitem")
    assert items.count() == 6
    page.wait_for_function("() => document.activeElement.getAttribute('role') === 'menuitem'")
    first = page.evaluate("() => document.activeElement.textContent.trim()")
    page.keyboard.press("ArrowDown")
    second = page.evaluate("() => document.activeElement.textContent.trim()")
    assert first.startswith("Few-shot") and second.startswith("English")
    page.keyboard.press("ArrowUp")
    page.keyboard.press("ArrowUp")  # wraps to the last
    assert page.evaluate("() => document.activeElement.textContent.trim()").startswith("Zero-shot")
    page.keyboard.press("Escape")
    menu.wait_for(state="hidden")
    assert button.get_attribute("aria-expanded") == "false"
    assert focused(page)["id"] == "examples-button"
    file_button = page.get_by_role("button", name="File", exact=True)
    file_button.focus()
    page.keyboard.press("ArrowUp")  # opens on the last item
    assert page.evaluate("() => document.activeElement.textContent").startswith("Import")
    page.keyboard.press("Tab")  # Tab leaves the menu and closes it
    page.get_by_role("menu", name="File").wait_for(state="hidden")


def test_presets_show_which_one_is_pressed(page):
    presets = page.get_by_role("group", name="Presets").get_by_role("button")
    page.get_by_role("button", name="Creative").click()
    assert [presets.nth(i).get_attribute("aria-pressed") for i in range(3)] == ["false", "false", "true"]
    page.get_by_role("button", name="Focused").click()
    assert [presets.nth(i).get_attribute("aria-pressed") for i in range(3)] == ["true", "false", "false"]
    set_settings(page, {"temperature": "0.9"})
    assert [presets.nth(i).get_attribute("aria-pressed") for i in range(3)] == ["false"] * 3, "a slider moved: none"
