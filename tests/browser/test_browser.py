"""The editor in Debian's Chromium, driven by Playwright, against a real server and model."""
import pytest
from browsing import TIMEOUT_MS, option_texts, options, set_settings, wait_until_done, write
from conftest import ARTIFACTS

pytestmark = pytest.mark.browser

GREEDY = {"temperature": "0", "stop_at": "length", "length": "12"}


def test_tab_streams_options_longer_on_tab_and_enter_accepts(page):
    set_settings(page, {"seed": "7", "length": "6", "stop_at": "length"})
    editor = write(page, "The best thing about summer is")
    editor.press("Tab")
    listbox = page.get_by_role("listbox", name="Suggestions")
    listbox.wait_for()
    assert options(page).count() == 3
    # options fill in while they stream: some text shows before the last token has come
    page.wait_for_function("() => [...document.querySelectorAll('#suggestions .option-text')].some(e => e.textContent)")
    wait_until_done(page)
    first = option_texts(page)
    assert all(first)
    page.screenshot(path=str(ARTIFACTS / "editor-options.png"))

    editor.press("Tab")  # repeat TAB: every option grows, keeping what was read
    wait_until_done(page)
    longer = option_texts(page)
    assert all(new.startswith(old) and len(new) > len(old) for old, new in zip(first, longer))

    editor.press("ArrowDown")
    selected = page.get_by_role("listbox", name="Suggestions").get_by_role("option", selected=True)
    assert selected.get_attribute("id") == "suggestion-1"
    editor.press("Enter")
    listbox.wait_for(state="hidden")
    assert editor.input_value() == "The best thing about summer is" + longer[1]

    editor.press("Control+z")  # the insert is one undoable edit
    assert editor.input_value() == "The best thing about summer is"


def test_shift_tab_makes_a_fresh_set_and_the_old_one_stays(page):
    set_settings(page, {"seed": "", "length": "5", "stop_at": "length"})
    editor = write(page, "My favourite food is")
    editor.press("Tab")
    wait_until_done(page)
    first = option_texts(page)
    editor.press("Shift+Tab")
    page.get_by_text("Set 2 of 2").wait_for()
    wait_until_done(page)
    editor.press("PageUp")
    page.get_by_text("Set 1 of 2").wait_for()
    assert option_texts(page) == first


def wait_for_frame(page, *parts):
    """Wait until a Socket.IO frame containing every one of `parts` has gone either way."""
    for _ in range(TIMEOUT_MS // 50):
        if any(isinstance(f, str) and all(p in f for p in parts) for f in page.socket_frames):
            return
        page.wait_for_timeout(50)
    raise AssertionError(f"no frame with {parts}: {page.socket_frames[-5:]}")


def test_escape_closes_and_typing_cancels(page):
    set_settings(page, {"length": "64", "stop_at": "length"})  # seconds of work, so there is something to stop
    editor = write(page, "Once upon a time")
    editor.press("Tab")
    listbox = page.get_by_role("listbox", name="Suggestions")
    listbox.wait_for()
    editor.press("Escape")
    listbox.wait_for(state="hidden")
    assert editor.input_value() == "Once upon a time"
    editor.press("Tab")
    page.wait_for_function("() => [...document.querySelectorAll('#suggestions .option-text')].some(e => e.textContent)")
    editor.press("!")  # typing moves on: the popup closes, the key is typed, the request stops
    listbox.wait_for(state="hidden")
    assert editor.input_value() == "Once upon a time!"
    wait_for_frame(page, '"cancel"')
    wait_for_frame(page, '"done"', '"cancelled"')


def test_click_accepts_and_reload_keeps_the_text(page):
    set_settings(page, GREEDY)
    editor = write(page, "The capital of France is")
    editor.press("Tab")
    wait_until_done(page)
    chosen = option_texts(page)[2]
    options(page).nth(2).click()
    expected = "The capital of France is" + chosen
    assert editor.input_value() == expected
    page.reload()
    page.locator("#status .status-connection[data-state=connected]").wait_for()
    assert page.get_by_role("textbox", name="Document").input_value() == expected


def test_model_text_is_shown_as_text_never_as_html(page):
    set_settings(page, {**GREEDY, "length": "24"})  # the model copies the pattern: real output with a tag
    line = "Line: <img src=x onerror=alert(1)>\n"
    editor = page.get_by_role("textbox", name="Document")
    editor.fill(line * 3 + "Line:")
    editor.press("End")
    editor.press("Tab")
    wait_until_done(page)
    texts = option_texts(page)
    assert any("<img src=x onerror=alert(1)>" in text for text in texts), texts
    assert page.locator("#suggestions img").count() == 0
    page.screenshot(path=str(ARTIFACTS / "editor-html-as-text.png"))
    editor.press("Enter")
    assert "<img src=x onerror=alert(1)>" in editor.input_value().removeprefix(line * 3)


def test_status_bar_shows_model_device_warning_and_timing(page):
    status = page.get_by_role("contentinfo", name="Status bar")
    assert "SmolLM2-135M" in status.inner_text()
    assert "cpu · float32" in status.inner_text()
    assert page.locator(".status-warning").is_visible()
    assert "gpt2-large" in page.locator(".status-warning").inner_text()
    editor = write(page, "Hello")
    editor.press("Tab")
    page.locator(".status-timing").filter(has_text="first option in").wait_for()


def test_a_bad_setting_shows_the_servers_message(page):
    # a hand-edited value outside the range: the server names the field, the page shows it
    page.eval_on_selector("#setting-top_k",
                          "el => { el.max = 5000; el.value = 5000; el.dispatchEvent(new Event('input')); }")
    editor = write(page, "Hello")
    editor.press("Tab")
    page.get_by_role("alert").filter(has_text="settings.top_k must be an integer from 0 to 1000").wait_for()


def test_readme_screenshot(page):
    """Keep a picture of the editor as a user sees it (copied to docs/ for the README)."""
    set_settings(page, {"seed": "3", "length": "10", "stop_at": "sentence"})
    editor = write(page, "Dear students,\n\nToday we will learn how a language model writes. "
                         "It reads the text so far and")
    editor.press("Tab")
    wait_until_done(page)
    page.screenshot(path=str(ARTIFACTS / "screenshot.png"))


def test_a_pause_in_typing_lets_the_server_read_ahead(page):
    set_settings(page, {"temperature": "0", "length": "4", "stop_at": "length"})
    editor = write(page, "The lighthouse keeper climbed")
    page.wait_for_function("() => true")  # let the page's timers run
    for _ in range(TIMEOUT_MS // 50):
        if any(f.startswith('42["primed"') for f in page.socket_frames):
            break
        page.wait_for_timeout(50)
    [sent] = [f for f in page.socket_frames if f.startswith('42["prime"')]
    assert '"text":"The lighthouse keeper climbed"' in sent, "one prime, after the pause, with the whole text"
    editor.press("Tab")
    wait_until_done(page)
    done = next(f for f in page.socket_frames if f.startswith('42["done"'))
    assert '"reused_tokens":' in done and '"reused_tokens":0' not in done


def test_the_status_bar_shows_the_documents_perplexity_and_follows_the_text(page):
    figure = page.locator("#status .status-perplexity")
    write(page, "The cat sat on the mat.")
    page.wait_for_function("() => document.querySelector('#status .status-perplexity').textContent !== ''")
    plain = figure.text_content()
    assert plain.startswith("perplexity ") and "tokens" in plain
    write(page, " Purple algebra swims loudly beneath Tuesday.")
    page.wait_for_function("shown => !['', shown].includes(document.querySelector('#status .status-perplexity')"
                           ".textContent)", arg=plain)
    surprised = figure.text_content()
    assert float(surprised.split()[1]) > float(plain.split()[1]), "nonsense raises the perplexity"
    page.screenshot(path=str(ARTIFACTS / "status-perplexity.png"))


@pytest.mark.parametrize("dtype", ["int4", "bfloat16"])
def test_the_editor_writes_with_the_embedded_model_in_a_cpu_format(browser, dtype):
    """int4 (what `auto` picks on CPUs with bfloat16 units) and bfloat16 (every layer blocked for AMX there),
    end to end: status, Tab, Tab again, Enter."""
    from browsing import open_page
    from conftest import RunningServer

    server = RunningServer("embedded", {"TABWRITE_DTYPE": dtype}).wait_ready()
    try:
        page = open_page(browser, server.url)
        page.get_by_role("contentinfo", name="Status bar").filter(has_text=f"cpu · {dtype}").wait_for()
        set_settings(page, {"seed": "3", "length": "6", "stop_at": "length"})
        editor = write(page, "The best thing about summer is")
        editor.press("Tab")
        wait_until_done(page)
        first = option_texts(page)
        assert len(first) == 3 and all(first)
        page.screenshot(path=str(ARTIFACTS / f"editor-{dtype}.png"))
        editor.press("Tab")
        wait_until_done(page)
        longer = option_texts(page)
        assert all(new.startswith(old) and len(new) > len(old) for old, new in zip(first, longer))
        editor.press("Enter")
        page.get_by_role("listbox", name="Suggestions").wait_for(state="hidden")
        assert editor.input_value() == "The best thing about summer is" + longer[0]
        assert page.errors == []
        page.context.close()
    finally:
        server.stop()
