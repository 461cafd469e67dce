"""What a keyboard user on a phone or a narrow window finds next: the drawer holds the focus, the way out shows."""
import pytest
from browsing import open_page

pytestmark = pytest.mark.browser

FOCUS_IN_PANEL = "() => document.getElementById('settings').contains(document.activeElement)"


def test_the_settings_drawer_holds_the_focus_until_it_closes(browser, embedded_server):
    page = open_page(browser, embedded_server.url, viewport={"width": 390, "height": 844})
    try:
        page.locator("#editor").focus()
        page.keyboard.press("Escape")
        page.keyboard.press("Shift+Tab")  # out of the editor, back to the top bar's Settings button
        while page.evaluate("document.activeElement.id") != "settings-toggle":
            page.keyboard.press("Shift+Tab")
        page.keyboard.press("Enter")
        assert page.evaluate(FOCUS_IN_PANEL)
        for _ in range(60):  # past the last control and round again: never behind the drawer
            page.keyboard.press("Tab")
            assert page.evaluate(FOCUS_IN_PANEL), page.evaluate("document.activeElement.outerHTML.slice(0, 80)")
        page.keyboard.press("Escape")
        assert page.evaluate("document.activeElement.id") == "settings-toggle"
        assert not page.evaluate("document.getElementById('editor').closest('[inert]')"), "open again once closed"
        assert page.errors == []
    finally:
        page.context.close()


@pytest.mark.parametrize("width, shown", [(1024, True), (1280, False)])
def test_where_the_top_bar_has_no_room_for_the_hint_the_way_out_shows_at_the_editor(browser, embedded_server,
                                                                                    width, shown):
    page = open_page(browser, embedded_server.url, viewport={"width": width, "height": 768})
    try:
        page.locator("#editor").focus()
        hint = page.locator(".exit-hint")
        top_bar = page.locator("#key-hint")
        assert hint.is_visible() == shown and top_bar.is_visible() != shown, "one of them is always in sight"
        assert "leaves the editor" in (hint.text_content() if shown else top_bar.text_content())
    finally:
        page.context.close()


def test_the_empty_page_hint_goes_once_there_is_text_to_continue(page):
    from browsing import wait_until_done, write

    editor = page.get_by_role("textbox", name="Document")
    editor.press("Tab")
    message = page.locator("#status .status-message")
    assert "write a few words" in message.inner_text()
    write(page, "The river ran past").press("Tab")
    wait_until_done(page)
    assert "write a few words" not in message.inner_text()


@pytest.mark.parametrize("height", [450, 844])
def test_on_a_short_phone_screen_the_options_never_cover_the_buttons(browser, embedded_server, height):
    from browsing import wait_until_done, write

    page = open_page(browser, embedded_server.url, viewport={"width": 390, "height": height}, has_touch=True)
    try:
        write(page, "Dear students,\\n\\nToday we will learn how a language model writes. It reads the text so far and")
        page.tap("#action-suggest")
        wait_until_done(page)
        for button in ("#action-longer", "#action-new"):
            box = page.locator(button).bounding_box()
            on_top = page.evaluate("([x, y]) => document.elementFromPoint(x, y)?.closest('button')?.id ?? null",
                                   [box["x"] + box["width"] / 2, box["y"] + box["height"] / 2])
            assert on_top == button[1:], f"{button} is covered at 390 x {height}"
        page.tap("#action-longer")
        wait_until_done(page)
        assert page.errors == []
    finally:
        page.context.close()
