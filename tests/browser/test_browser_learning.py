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
