"""The learning views for everyone: whole characters, the surprise view by keyboard and on long documents,
examples that can be undone with their settings."""
import pytest
from browsing import set_settings, write

pytestmark = pytest.mark.browser

JAPANESE = "今日はとても良い天気ですね。散歩に行きましょう。"


def test_japanese_shows_whole_characters_in_the_surprise_view_its_tooltip_and_the_chart(page):
    editor = page.get_by_role("textbox", name="Document")
    editor.fill(JAPANESE)
    page.get_by_role("button", name="Surprise").click()
    tokens = page.locator("#lens .lens-text .token")
    tokens.first.wait_for()
    texts = tokens.all_text_contents()
    assert texts == list(JAPANESE), texts
    assert "" not in texts and not any("\ufffd" in text for text in texts)
    assert page.locator("#lens .lens-text").inner_text() == JAPANESE
    split = page.locator("#lens .token", has_text="今")
    split.hover()
    tip = page.get_by_role("tooltip")
    tip.wait_for()
    assert "\ufffd" not in tip.inner_text() and "tokens, each part of a character" in tip.inner_text()
    assert "<0x" in tip.inner_text(), "a token's own bytes, where it holds part of a character"
    page.keyboard.press("Escape")
    set_settings(page, {"mode": "sample", "temperature": "1", "top_k": "0", "top_p": "1"})
    page.get_by_role("button", name="Show the next-token chart").click()
    editor.fill("東京は日本の")
    page.wait_for_function("() => document.querySelectorAll('#distribution .token-label').length === 20 && "
                           "document.querySelector('#distribution-summary, #distribution .distribution-summary')"
                           ".textContent !== 'Reading the text…'")
    labels = page.locator("#distribution .token-label").all_text_contents()
    assert not any("\ufffd" in label for label in labels), labels


def test_the_surprise_view_of_a_long_document_opens_where_the_scoring_starts_and_is_one_tab_stop(page):
    sentence = "The river ran past the old mill, and the children watched the boats go by. "
    page.get_by_role("textbox", name="Document").fill(sentence * 110)  # well over the model's 1024 tokens
    page.get_by_role("button", name="Surprise").click()
    tokens = page.locator("#lens .lens-text .token")
    tokens.first.wait_for()
    assert page.locator("#lens .lens-text .unscored").count() == 1
    note = page.locator("#lens .lens-note")
    assert note.is_visible() and "not scored" in note.inner_text() and "context window" in note.inner_text()
    assert "not scored" in page.locator("#lens .lens-legend").inner_text()
    lens, first = page.locator("#lens").bounding_box(), tokens.first.bounding_box()
    assert lens["y"] <= first["y"] <= lens["y"] + lens["height"], "the view opens at the scored part"
    assert page.evaluate("() => document.querySelector('#lens').scrollTop") > 0
    assert page.evaluate("() => document.activeElement.dataset.token") == "0", "the focus is on the first token"
    assert page.locator("#lens .lens-text [tabindex='0']").count() == 1, "one Tab stop for the whole view"
    assert page.get_by_role("tooltip").is_visible()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    assert page.evaluate("() => document.activeElement.dataset.token") == "2"
    assert page.locator("#lens .lens-text [tabindex='0']").count() == 1
    page.keyboard.press("End")
    last = page.evaluate("() => document.activeElement.dataset.token")
    assert int(last) == tokens.count() - 1
    page.keyboard.press("ArrowLeft")
    assert page.evaluate("() => document.activeElement.dataset.token") == str(int(last) - 1)
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.dataset.token") is None, "Tab leaves the tokens"
    assert page.evaluate("() => document.activeElement.id") != "editor", "the hidden editor is out of reach"
    page.keyboard.press("Shift+Tab")
    assert page.evaluate("() => document.activeElement.dataset.token") == str(int(last) - 1), "and comes back"
    page.keyboard.press("Escape")
    page.locator("#lens").wait_for(state="hidden")
    assert page.evaluate("() => document.activeElement.id") == "editor"


def current(page, *names):
    return [page.locator(f"#setting-{name}").input_value() for name in names]


def test_undoing_an_example_brings_back_the_settings_too_and_they_can_be_restored_alone(page):
    set_settings(page, {"mode": "sample", "temperature": "0.7", "length": "10", "stop_at": "sentence"})
    mine = current(page, "mode", "temperature", "length", "stop_at")
    editor = write(page, "My own draft.")
    page.get_by_role("button", name="Examples").click()
    page.get_by_role("menuitem", name="Few-shot sentiment classification").click()
    assert current(page, "mode", "length", "stop_at") == ["greedy", "2", "length"]
    message = page.locator("#status .status-message").inner_text()
    assert "greedy" in message and "length 2" in message and "Ctrl+Z" in message
    editor.press("Control+z")
    assert editor.input_value() == "My own draft."
    assert current(page, "mode", "temperature", "length", "stop_at") == mine, "Ctrl+Z undoes the settings too"
    editor.press("Control+Shift+z")
    assert editor.input_value().endswith("Sentiment:")
    assert current(page, "mode", "length") == ["greedy", "2"], "and redo does them again"
    editor.press("Control+z")

    page.get_by_role("button", name="Examples").click()
    page.get_by_role("menuitem", name="English → French translation").click()
    assert current(page, "mode", "length") == ["greedy", "4"]
    page.get_by_role("button", name="Restore my settings").click()
    assert current(page, "mode", "temperature", "length", "stop_at") == mine
    assert editor.input_value().endswith("cheese =>"), "the example's text stays"
    assert page.get_by_role("button", name="Restore my settings").is_hidden()
    page.reload()
    page.locator("#status .status-connection[data-state=connected]").wait_for()
    assert current(page, "mode", "temperature", "length", "stop_at") == mine, "and stay after a reload"
