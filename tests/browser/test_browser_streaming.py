"""Streaming that never loses a keypress: Tab again before the first words, waiting, and why options stop."""
import json

import pytest
from browsing import option_texts, set_settings, wait_until_done, write
from conftest import Recorder

from webapp.web.protocol import FINISH_REASONS

pytestmark = pytest.mark.browser

GREEDY = {"temperature": "0", "stop_at": "length", "length": "6"}


def frames(page, event):
    """(index, payload) of every Socket.IO frame of `event`, both ways, in the order they went."""
    prefix = f'42["{event}",'
    return [(i, json.loads(f[2:])[1]) for i, f in enumerate(page.socket_frames)
            if isinstance(f, str) and f.startswith(prefix)]


def test_a_double_tab_before_the_first_words_ends_with_a_full_longer_set(page, embedded_server):
    set_settings(page, {**GREEDY, "length": "24"})
    editor = write(page, "The old lighthouse keeper")
    editor.press("Tab")
    wait_until_done(page)
    [whole] = set(option_texts(page))  # greedy: one text, three times
    editor.press("Escape")
    set_settings(page, GREEDY)
    editor.press("Tab")
    wait_until_done(page)
    [short] = set(option_texts(page))
    editor.press("Escape")

    sent = len(page.socket_frames)
    # Another student keeps the model busy, so that this Tab waits in the queue, as in a class; two Tabs in
    # one task: the second certainly comes before any answer to the first (a person's are some ms apart).
    other = Recorder(embedded_server.url)
    try:
        other.client.emit("suggest", {"id": "other", "text": "A very long story",
                                      "settings": {"n": 5, "length": 48, "stop_at": "length"}})
        other.wait("delta", "other")
        notes = page.evaluate("""() => {
            const editor = document.getElementById('editor');
            const tab = () => editor.dispatchEvent(new KeyboardEvent('keydown', {key: 'Tab', bubbles: true, cancelable: true}));
            tab(); tab();
            return [...document.querySelectorAll('#suggestions .option-note')].map(e => e.textContent);
        }""")
        assert notes == ["waiting…"] * 3, "before the first words the options say they wait"
        wait_until_done(page)
    finally:
        other.client.emit("cancel", {"id": "other"})
        other.wait("done", "other")
        other.close()
    texts = option_texts(page)
    assert len(texts) == 3 and all(texts), texts
    assert all(whole.startswith(text) and len(text) > len(short) for text in texts), (texts, short, whole)
    assert page.locator("#suggestions .popup-error").is_hidden()
    assert "option set" not in page.locator("#status").inner_text()
    assert not [f for f in page.socket_frames[sent:] if f.startswith('42["error"')]
    [(_, suggest)] = [(i, p) for i, p in frames(page, "suggest") if i >= sent]
    [(sent_at, extend)] = [(i, p) for i, p in frames(page, "extend") if i >= sent]
    assert extend["parent"] == suggest["id"]
    first_words = min(i for i, p in frames(page, "delta") if p["id"] == suggest["id"])
    assert sent_at > first_words, "the extend waited for the set to exist"


def test_waiting_counts_the_seconds_and_every_finish_reason_is_explained(page):
    notes = page.evaluate("""async () => {
        const { Column } = await import('/static/js/optionsets.js');
        const { FINISH_REASONS, waitingNote } = await import('/static/js/popup.js');
        const column = new Column('x-1', 'model', {}, 3);
        column.sentAt -= 3200;
        const waiting = waitingNote(column);
        column.addDeltas(['A', '', '']);
        return { waiting, writing: waitingNote(column), reasons: FINISH_REASONS };
    }""")
    assert notes["waiting"] == "waiting 3 s…" and notes["writing"] == "writing…"
    assert set(notes["reasons"]) == set(FINISH_REASONS)
    assert all(why for _, why in notes["reasons"].values()), "every reason has its explanation"
    assert "time limit" not in json.dumps(notes["reasons"])
    set_settings(page, GREEDY)
    write(page, "Hello").press("Tab")
    wait_until_done(page)
    option = page.get_by_role("listbox", name="Suggestions").get_by_role("option").first
    assert option.get_attribute("title") == notes["reasons"]["length"][1]


def test_options_cut_off_by_a_dropped_connection_say_so_and_tab_asks_again(browser, embedded):
    from browsing import open_page
    from conftest import RunningServer

    server = RunningServer("embedded").wait_ready()
    page = open_page(browser, server.url)
    try:
        set_settings(page, {"length": "64", "stop_at": "length"})
        editor = write(page, "Once upon a time, in a small town by the sea,")
        editor.press("Tab")
        page.wait_for_function("() => [...document.querySelectorAll('#suggestions .option.streaming .option-text')]"
                               ".some((text) => text.textContent.trim().length > 0)")
        server.stop()  # the connection drops with the options half written: the server forgot the request
        message = page.get_by_text("The connection dropped before these options were finished", exact=False)
        message.first.wait_for()
        assert "press Tab to ask again" in message.first.text_content()
    finally:
        page.context.close()
        server.stop()


def test_a_waiting_request_shows_its_place_in_line(page):
    note = page.evaluate("""async () => {
        const { Column } = await import('/static/js/optionsets.js');
        const { waitingNote } = await import('/static/js/popup.js');
        const column = new Column('x-1', 'model', {}, 3);
        column.sentAt -= 3200;
        column.ahead = 2;
        return waitingNote(column);
    }""")
    assert note == "waiting 3 s, 2 ahead in line…"
