"""Phones, tablets and small windows in Chromium: no sideways scrolling, a top bar that folds into a menu,
settings in a drawer, and buttons that do what Tab does for screens without a Tab key."""
import pytest
from browsing import open_page, option_texts, options, set_settings, wait_until_done
from conftest import ARTIFACTS

pytestmark = pytest.mark.browser

PHONE = {"width": 390, "height": 844}
GREEDY = {"temperature": "0", "stop_at": "length", "length": "6"}


def phone(browser, server, **options):
    """The editor on a phone: 390 × 844, touch, the page's own viewport meta honoured."""
    return open_page(browser, server.url, viewport=PHONE, has_touch=True, is_mobile=True, **options)


def fits(page):
    return page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")


def in_view(page, locator):
    box = locator.bounding_box()
    return box is not None and box["x"] >= 0 and box["x"] + box["width"] <= page.viewport_size["width"] + 0.5


@pytest.mark.parametrize("width", [360, 390, 600, 800, 820, 1024, 1280])
def test_no_sideways_scrolling_from_360_px_up(browser, embedded_server, width):
    page = open_page(browser, embedded_server.url, viewport={"width": width, "height": 800})
    set_settings(page, GREEDY)
    assert fits(page), "the page as it opens"
    editor = page.get_by_role("textbox", name="Document")
    editor.fill("A long line of text that goes on and on, without a break, to see where it wraps: " * 3)
    editor.press("Tab")
    wait_until_done(page)
    assert fits(page), "options open"
    toggle = page.locator("#tools-toggle")
    if toggle.is_visible():
        toggle.click()
        page.get_by_role("button", name="Examples").click()
        assert fits(page), "the folded top bar and a menu open"
        page.keyboard.press("Escape")
        page.keyboard.press("Escape")
    if page.locator("#settings").is_hidden():
        page.get_by_role("button", name="Settings").click()
    assert fits(page), "settings open"
    top_bar = page.locator(".topbar").bounding_box()["height"]
    assert top_bar <= 64, f"the top bar stays one row at {width} px: {top_bar} px"
    assert page.errors == []
    page.context.close()


def test_on_a_phone_every_top_bar_control_is_reachable_and_suggest_shows_options(browser, embedded_server):
    page = phone(browser, embedded_server)
    assert page.evaluate("() => window.innerWidth") == 390 and fits(page)
    controls = page.locator(".topbar").locator("button:not([hidden]), a, select, [tabindex='0']")
    menu = page.get_by_role("button", name="Menu")
    assert menu.get_attribute("aria-expanded") == "false"
    menu.tap()
    assert menu.get_attribute("aria-expanded") == "true"
    names = []
    for i in range(controls.count()):
        control = controls.nth(i)
        if not control.is_visible() and control.locator("xpath=ancestor::*[@hidden]").count():
            continue  # inside a closed menu or a hidden result: reached through its own button
        assert control.is_visible() and in_view(page, control), control.inner_text()
        names.append(control.inner_text().strip())
    assert {"Write", "Surprise", "Model-written", "Examples", "File", "Publish", "Settings", "Menu"} <= set(names)
    page.get_by_role("button", name="Examples").tap()
    item = page.get_by_role("menuitem").first
    page.screenshot(path=str(ARTIFACTS / "phone-examples.png"))
    assert item.is_visible() and in_view(page, item), (item.bounding_box(), page.evaluate("() => innerWidth"))
    page.keyboard.press("Escape")
    menu.tap()
    assert page.locator("#tools").is_hidden()

    set_settings(page, GREEDY)
    editor = page.get_by_role("textbox", name="Document")
    editor.tap()
    editor.press_sequentially("The best thing about summer is")
    assert page.get_by_role("button", name="Longer").is_disabled()
    page.get_by_role("button", name="Suggest").tap()
    wait_until_done(page)
    first = option_texts(page)
    assert len(first) == 3 and all(first)
    assert in_view(page, page.get_by_role("listbox", name="Suggestions"))
    page.get_by_role("button", name="Longer").tap()
    wait_until_done(page)
    longer = option_texts(page)
    assert all(new.startswith(old) and len(new) > len(old) for old, new in zip(first, longer))
    page.get_by_role("button", name="New set").tap()
    page.get_by_text("Set 2 of 2").wait_for()
    wait_until_done(page)
    page.screenshot(path=str(ARTIFACTS / "phone-options.png"))
    chosen = option_texts(page)[1]
    options(page).nth(1).tap()
    assert editor.input_value() == "The best thing about summer is" + chosen
    assert page.errors == []
    page.context.close()


def test_on_a_phone_the_settings_are_a_drawer(browser, embedded_server):
    page = phone(browser, embedded_server)
    toggle = page.get_by_role("button", name="Settings", exact=True)
    drawer = page.get_by_role("complementary", name="Settings")
    assert toggle.get_attribute("aria-expanded") == "false" and drawer.is_hidden()
    toggle.tap()
    assert toggle.get_attribute("aria-expanded") == "true" and drawer.is_visible() and in_view(page, drawer)
    assert page.evaluate("() => document.activeElement.textContent") == "Close"
    page.screenshot(path=str(ARTIFACTS / "phone-settings.png"))
    page.keyboard.press("Escape")
    drawer.wait_for(state="hidden")
    assert toggle.get_attribute("aria-expanded") == "false"
    assert page.evaluate("() => document.activeElement.id") == "settings-toggle"
    toggle.tap()
    page.get_by_role("button", name="Close the settings").tap()
    drawer.wait_for(state="hidden")
    assert page.errors == []
    page.context.close()


def test_suggest_is_reachable_from_the_keyboard_on_a_wide_screen(page):
    editor = page.get_by_role("textbox", name="Document")
    editor.press_sequentially("Once upon a time")
    buttons = page.get_by_role("group", name="Ask the model")
    assert buttons.bounding_box()["width"] <= 1, "out of sight with a mouse"
    page.keyboard.press("Escape")
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.id") == "action-suggest"
    assert buttons.bounding_box()["width"] > 40, "shown once the keyboard reaches it"
    page.keyboard.press("Enter")
    page.get_by_role("listbox", name="Suggestions").wait_for()
    assert page.evaluate("() => document.activeElement.id") == "editor", "back in the editor, where ↑ ↓ Enter choose"


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("width", [390, 800, 1280])
def test_screenshots_light_and_dark(browser, embedded_server, width, scheme):
    """The editor with options open at a phone's, a tablet's and a laptop's width (copied to docs/screens/)."""
    small = width < 800
    page = open_page(browser, embedded_server.url, viewport={"width": width, "height": 844 if small else 800},
                     color_scheme=scheme, has_touch=small, is_mobile=small)
    paper = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
    assert (paper == "rgb(21, 24, 30)") == (scheme == "dark"), paper
    set_settings(page, {"seed": "3", "length": "10", "stop_at": "sentence"})
    editor = page.get_by_role("textbox", name="Document")
    editor.fill("Dear students,\n\nToday we will learn how a language model writes. It reads the text so far and")
    editor.press("End")
    editor.press("Tab")
    wait_until_done(page)
    (ARTIFACTS / "screens").mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "screens" / f"editor-{width}-{scheme}.png"))
    assert page.errors == []
    page.context.close()
