"""The learning lens in Chromium: surprise view, next-token chart, decoding modes, examples, provenance, files."""
import json

import pytest
from browsing import open_page, option_texts, options, set_settings, wait_until_done, write
from conftest import ARTIFACTS

pytestmark = pytest.mark.browser

GREEDY = {"temperature": "0", "stop_at": "length", "length": "6"}


def sent(page, event):
    """Payloads of one client event the page sent over the websocket (requests carry settings, answers do not)."""
    prefix = f'42["{event}",'
    frames = [json.loads(frame[2:])[1] for frame in page.socket_frames
              if isinstance(frame, str) and frame.startswith(prefix)]
    return [payload for payload in frames if "settings" in payload]


def test_surprise_view_tints_tokens_and_the_tooltip_shows_probabilities(page):
    write(page, "The cat sat on the mat. Purple algebra swims loudly beneath Tuesday.")
    page.get_by_role("button", name="Surprise").click()
    tokens = page.locator("#lens .lens-text .token")
    tokens.first.wait_for()
    assert page.locator("#lens .lens-text").inner_text() == page.locator("#editor").input_value()
    kinds = set(page.eval_on_selector_all("#lens .token", "els => els.map(e => e.classList[1])"))
    assert "top10" in kinds and kinds & {"top1000", "beyond"}, f"likely and surprising tokens differ: {kinds}"
    surprising = page.locator("#lens .token.beyond, #lens .token.top1000").first
    surprising.hover()
    tip = page.get_by_role("tooltip")
    tip.wait_for()
    assert "rank" in tip.locator(".tip-head").inner_text() and "%" in tip.inner_text()
    assert tip.locator("li").count() == 5
    page.screenshot(path=str(ARTIFACTS / "surprise-view.png"))
    page.keyboard.press("Escape")
    page.locator("#lens").wait_for(state="hidden")
    assert page.get_by_role("button", name="Write").get_attribute("aria-pressed") == "true"


def test_the_next_token_chart_follows_the_caret_and_reacts_to_the_temperature_slider(page):
    set_settings(page, {"mode": "sample", "temperature": "1", "top_k": "0", "top_p": "1"})
    page.get_by_role("button", name="Show the next-token chart").click()
    write(page, "The capital of France is")
    first = page.locator("#distribution .candidate").first
    page.wait_for_function("() => document.querySelector('#distribution .token-label')?.textContent === '\u2423Paris'")
    model, shaped = first.locator(".figures").inner_text().split(" → ")
    assert model == shaped, "temperature 1 and no cuts: sampling follows the model"
    reads = len(sent(page, "distribution"))
    set_settings(page, {"temperature": "0.3"})
    page.wait_for_function(f"() => !document.querySelector('#distribution .figures').textContent.endsWith('{shaped}')")
    sharper = first.locator(".figures").inner_text().split(" → ")[1]
    assert float(sharper.rstrip(" %")) > float(shaped.rstrip(" %")), "a low temperature sharpens the top token"
    set_settings(page, {"top_k": "3"})
    page.wait_for_function("() => document.querySelectorAll('#distribution .candidate:not(.excluded)').length === 3")
    assert "3 of " in page.locator("#distribution .distribution-summary").inner_text()
    assert len(sent(page, "distribution")) == reads + 2, "each slider move asks once"
    page.locator("#distribution").screenshot(path=str(ARTIFACTS / "next-token-chart.png"))


def test_each_option_shows_its_perplexity_and_the_popup_names_the_decoding(page):
    set_settings(page, {**GREEDY, "mode": "beam", "beams": "3", "n": "2"})
    editor = write(page, "The capital of France is")
    editor.press("Tab")
    wait_until_done(page)
    assert options(page).count() == 2
    assert "beam search, 3 beams" in page.locator("#suggestions .set-label").inner_text()
    badges = page.locator("#suggestions .option-likelihood").all_text_contents()
    assert all(badge.startswith("perplexity ") for badge in badges)
    editor.press("Escape")
    set_settings(page, {"mode": "greedy", "n": "3"})
    editor.press("Tab")
    wait_until_done(page)
    assert options(page).count() == 1, "greedy writes one text"
    assert "greedy" in page.locator("#suggestions .set-label").inner_text()
    [suggest] = [p for p in sent(page, "suggest") if p["settings"]["mode"] == "greedy"]
    assert suggest["settings"]["n"] == 1


def test_presets_set_the_sliders_and_explain_themselves(page):
    page.get_by_role("button", name="Creative").click()
    assert page.locator("#setting-temperature").input_value() == "1.2"
    assert "flattens" in page.locator("#settings .preset-note").inner_text()
    page.get_by_role("button", name="Focused").click()
    assert page.locator("#setting-top_k").input_value() == "10"


def test_an_example_loads_with_its_settings_and_ctrl_z_brings_the_text_back(page):
    editor = write(page, "My own draft.")
    page.get_by_role("button", name="Examples").click()
    page.get_by_role("menuitem", name="Few-shot sentiment classification").click()
    assert editor.input_value().startswith("Review: The film was a delight")
    assert editor.input_value().endswith("Sentiment:")
    assert page.locator("#setting-mode").input_value() == "greedy"
    assert "few-shot" in page.locator("#status .status-message").inner_text()
    editor.press("Tab")
    wait_until_done(page)
    assert option_texts(page)[0].strip(), "the model answers the prompt"
    editor.press("Escape")
    editor.press("Control+z")
    assert editor.input_value() == "My own draft."


def test_model_written_text_is_remembered_highlighted_exported_and_imported(page, tmp_path):
    set_settings(page, GREEDY)
    editor = write(page, "Once upon a time")
    editor.press("Tab")
    wait_until_done(page)
    [accepted, *_] = option_texts(page)
    editor.press("Enter")
    editor.press_sequentially(" The end.")
    page.reload()
    page.locator("#status .status-connection[data-state=connected]").wait_for()
    page.get_by_role("button", name="Model-written").click()
    assert page.locator("#lens mark.model-written").all_text_contents() == [accepted], "survives a reload"
    assert f"{len(accepted)} of {len('Once upon a time' + accepted + ' The end.')}" in page.locator(
        "#lens .lens-title").inner_text()
    page.screenshot(path=str(ARTIFACTS / "model-written.png"))
    page.get_by_role("button", name="Write").click()

    files = {}
    for kind in ("json", "md", "txt"):
        page.get_by_role("button", name="File", exact=True).click()
        with page.expect_download() as download:
            page.get_by_role("menuitem", name=f"Export as .{kind}").click()
        files[kind] = tmp_path / f"doc.{kind}"
        download.value.save_as(files[kind])
    saved = json.loads(files["json"].read_text())
    text = "Once upon a time" + accepted + " The end."
    assert saved["text"] == text and saved["format"] == "tabwrite-document"
    assert saved["spans"] == [{"start": 16, "end": 16 + len(accepted), "model": saved["model"]}]
    assert saved["settings"]["temperature"] == 0 and saved["model"]
    assert f"<mark title=\"written by {saved['model']}\">{accepted}</mark>" in files["md"].read_text()
    assert files["txt"].read_text() == text

    for kind in ("json", "md"):
        page.get_by_role("button", name="Write").click()
        editor.fill("Something else <b>&amp;</b>")
        page.get_by_role("button", name="File", exact=True).click()
        page.locator("#import-file").set_input_files(str(files[kind]))
        page.wait_for_function(f"() => document.querySelector('#editor').value === {json.dumps(text)}")
        page.get_by_role("button", name="Model-written").click()
        assert page.locator("#lens mark.model-written").all_text_contents() == [accepted], kind
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}')
    page.get_by_role("button", name="Write").click()
    page.get_by_role("button", name="File", exact=True).click()
    page.locator("#import-file").set_input_files(str(bad))
    page.get_by_text("Import failed: this .json file is not a TabWrite document").wait_for()
    assert editor.input_value() == text, "a bad file changes nothing"


def test_markdown_round_trips_text_that_looks_like_html(page, tmp_path):
    text = 'a < b && "c" <mark>not mine</mark> &lt;'
    page.evaluate("""async (text) => {
        const files = await import('/static/js/files.js');
        const doc = {text, spans: [{start: 2, end: 5, model: 'm "x"'}], model: 'm', settings: {}};
        const back = files.importDocument('d.md', files.exportDocument(doc, 'md').body);
        window.roundTrip = back;
    }""", text)
    back = page.evaluate("() => window.roundTrip")
    assert back["text"] == text and back["spans"] == [{"start": 2, "end": 5, "model": 'm "x"'}]


@pytest.fixture(scope="module")
def two_model_server(embedded, tmp_path_factory):
    """The embedded model (the default) and a tiny random GPT-2 saved to a folder, served side by side."""
    from conftest import RunningServer, build_tiny_gpt2

    folder = tmp_path_factory.mktemp("models") / "tiny-gpt2"
    build_tiny_gpt2(embedded.tokenizer).save_pretrained(folder)
    embedded.tokenizer.save_pretrained(folder)
    server = RunningServer("embedded", args=("--model", str(folder))).wait_ready()
    yield server
    server.stop()


def test_compare_mode_shows_two_models_side_by_side(browser, two_model_server):
    page = open_page(browser, two_model_server.url)
    status = page.locator("#status .status-model")
    page.wait_for_function("() => document.querySelector('#status .status-model').textContent.includes('tiny-gpt2 (')")
    assert status.inner_text().startswith("SmolLM2") and "M)" in status.inner_text()
    set_settings(page, {**GREEDY, "n": "2"})
    page.select_option("#compare-model", "tiny-gpt2")
    editor = write(page, "The weather today is")
    editor.press("Tab")
    wait_until_done(page)
    heads = page.locator("#suggestions .column-head").all_inner_texts()
    assert len(heads) == 2 and heads[0].startswith("SmolLM2") and heads[1].startswith("tiny-gpt2")
    assert all("parameters" in head and "first words in" in head for head in heads)
    assert options(page).count() == 4
    suggests = sent(page, "suggest")
    assert [s["settings"]["model"] for s in suggests[-2:]] == [suggests[-2]["settings"]["model"], "tiny-gpt2"]
    assert suggests[-1]["text"] == suggests[-2]["text"], "both models continue the same text"
    page.screenshot(path=str(ARTIFACTS / "compare-models.png"))
    editor.press("Tab")  # longer: both columns grow
    wait_until_done(page)
    editor.press("ArrowDown")
    editor.press("ArrowDown")  # the third option: the tiny model's first
    tiny_text = option_texts(page)[2]
    editor.press("Enter")
    assert editor.input_value() == "The weather today is" + tiny_text
    page.get_by_role("button", name="Model-written").click()
    assert page.locator("#lens mark.model-written").get_attribute("title") == "written by tiny-gpt2"
    assert page.errors == []
    page.context.close()
