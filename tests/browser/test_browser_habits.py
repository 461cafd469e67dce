"""The habits of other editors in Chromium: ghost text at the caret, Ctrl+→ takes a word, Alt+] and Alt+[
move between options; and the small helps: Tab on an empty page, Compare with one model, the chart in sight."""
import pytest
from browsing import open_page, option_texts, options, set_settings, wait_until_done, write

pytestmark = pytest.mark.browser

SEEDED = {"seed": "7", "length": "8", "stop_at": "length", "mode": "sample"}


def selected(page):
    return page.evaluate("() => document.getElementById('editor').getAttribute('aria-activedescendant')")


def test_the_highlighted_option_shows_as_ghost_text_and_alt_brackets_move(page):
    set_settings(page, SEEDED)
    editor = write(page, "The best thing about summer is")
    editor.press("Tab")
    wait_until_done(page)
    texts = option_texts(page)
    ghost = page.locator("#editor-wrap .ghost .ghost-text")
    assert ghost.text_content() == texts[0]
    assert page.locator("#editor-wrap .ghost").get_attribute("aria-hidden") == "true"
    box, area = ghost.bounding_box(), editor.bounding_box()
    assert area["y"] <= box["y"] < area["y"] + area["height"]
    editor.press("Alt+BracketRight")
    assert selected(page) == "suggestion-1" and ghost.text_content() == texts[1]
    editor.press("Alt+BracketLeft")
    editor.press("Alt+BracketLeft")
    assert selected(page) == "suggestion-2" and ghost.text_content() == texts[2]
    editor.press("Escape")
    assert page.locator("#editor-wrap .ghost").count() == 0
    for _ in range(3):  # into "… summer| is": text after the caret, which no ghost may cover
        editor.press("ArrowLeft")
    editor.press("Tab")
    options(page).first.wait_for()
    wait_until_done(page)
    assert page.locator("#editor-wrap .ghost").count() == 0


def test_ctrl_right_takes_the_next_word_of_the_highlighted_option(page):
    set_settings(page, {"temperature": "0", "length": "8", "stop_at": "length"})
    editor = write(page, "The capital of France is")
    editor.press("Tab")
    wait_until_done(page)
    [whole, *_] = option_texts(page)
    editor.press("Control+ArrowRight")
    first_word = editor.input_value().removeprefix("The capital of France is")
    assert first_word and whole.startswith(first_word) and len(first_word) < len(whole)
    assert first_word.strip() and " " not in first_word.strip(), "one word, with the space before it"
    listbox = page.get_by_role("listbox", name="Suggestions")
    assert listbox.is_visible(), "the options stay, with what is left of them"
    assert option_texts(page)[0] == whole[len(first_word):]
    assert page.locator("#editor-wrap .ghost .ghost-text").text_content() == whole[len(first_word):]
    editor.press("Control+ArrowRight")
    editor.press("Enter")
    assert editor.input_value() == "The capital of France is" + whole
    page.get_by_role("button", name="Model-written").click()
    assert "".join(page.locator("#lens mark.model-written").all_text_contents()) == whole


def test_tab_on_an_empty_page_says_to_write_first(page):
    editor = page.get_by_role("textbox", name="Document")
    editor.press("Tab")
    assert "write a few words" in page.locator("#status .status-message").inner_text()
    page.wait_for_function("() => document.getElementById('announcer').textContent.includes('write a few words')")
    assert page.locator("#suggestions").is_hidden()
    assert not [f for f in page.socket_frames if f.startswith('42["suggest"')]


def test_compare_with_one_model_says_how_to_get_a_second(page):
    compare = page.locator("#compare-model")
    assert compare.is_visible() and compare.is_disabled()
    note = page.locator("#settings .compare-note")
    assert note.is_visible() and "--model distilgpt2 --model gpt2" in note.inner_text()


def test_the_next_token_chart_is_in_sight_of_the_sliders_it_explains(browser, embedded_server):
    page = open_page(browser, embedded_server.url, viewport={"width": 1280, "height": 800})
    page.get_by_role("button", name="Show the next-token chart").click()
    write(page, "The capital of France is")
    bars = page.locator("#distribution .candidate")
    bars.first.wait_for()
    page.locator("#settings").evaluate("(panel, slider) => { panel.scrollTop = slider.offsetTop - 80; }",
                                       page.locator("#setting-temperature").element_handle())
    in_sight = """el => { const box = el.getBoundingClientRect(), panel = el.closest('#settings').getBoundingClientRect();
        const seen = document.elementFromPoint(box.x + box.width / 2, box.y + box.height / 2);
        return box.top >= panel.top && box.bottom <= panel.bottom && (el === seen || el.contains(seen)); }"""
    for element in ("#setting-temperature", "#setting-top_k", "#setting-top_p", "#distribution .candidate:nth-child(1)",
                    "#distribution .candidate:nth-child(10)"):
        assert page.eval_on_selector(element, in_sight), element
    page.screenshot(path="test-artifacts/next-token-chart-in-sight.png")
    assert page.errors == []
    page.context.close()
