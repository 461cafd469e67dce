"""Several models served at once: each answers with its own tokens, status lists them, the budget holds."""
import time
from pathlib import Path

import pytest
from conftest import build_tiny_gpt2, connect, make_app, payloads, wait_for

from webapp.generation.engine import Engine
from webapp.models.loading import ModelSpec, count_parameters, estimate_weight_bytes
from webapp.web.protocol import SamplingSettings

GREEDY = {"temperature": 0, "stop_at": "length", "length": 6, "n": 1}


@pytest.fixture
def two_models_app(embedded, tiny):
    app = make_app([embedded, tiny])
    yield app
    app.extensions["tabwrite"].stop()


def greedy_alone(loaded, text):
    engine = Engine(loaded)
    generation, _ = engine.start(text, SamplingSettings(**GREEDY))
    while not generation.finished:
        engine.step(generation)
    return generation.texts()


def test_each_model_answers_with_its_own_tokens(two_models_app, embedded, tiny):
    client = connect(two_models_app)
    text = "The capital of France is"
    client.emit("suggest", {"id": "a", "text": text, "settings": {**GREEDY, "model": tiny.name}})
    client.emit("suggest", {"id": "b", "text": text, "settings": {**GREEDY, "model": embedded.name}})
    seen = wait_for(client, "a")
    seen += [] if payloads(seen, "done", "b") else wait_for(client, "b")
    answers = {i: payloads(seen, "done", i)[0] for i in "ab"}
    client.emit("suggest", {"id": "c", "text": text, "settings": GREEDY})
    answers["c"] = payloads(wait_for(client, "c"), "done", "c")[0]
    assert answers["a"]["options"] == greedy_alone(tiny, text) != greedy_alone(embedded, text)
    assert answers["b"]["options"] == answers["c"]["options"] == greedy_alone(embedded, text), "the default"
    assert answers["a"]["stats"]["settings"]["model"] == tiny.name
    # both ran to the end: one request in flight per student *per model*, which compare mode needs
    assert answers["a"]["finish"] == answers["b"]["finish"] == ["length"]


def test_extend_finds_its_set_in_its_model(two_models_app, tiny):
    client = connect(two_models_app)
    client.emit("suggest", {"id": "a", "text": "Hello", "settings": {**GREEDY, "model": tiny.name}})
    [first] = payloads(wait_for(client, "a"), "done", "a")
    client.emit("extend", {"id": "a2", "parent": "a", "settings": {"model": tiny.name}})
    [longer] = payloads(wait_for(client, "a2"), "done", "a2")
    assert longer["options"][0].startswith(first["options"][0]) and longer["stats"]["new_tokens"] == 6
    client.emit("extend", {"id": "a3", "parent": "a2"})  # the default model never had it
    assert payloads(wait_for(client, "a3", event="error"), "error", "a3")[0]["code"] == "unknown_parent"


def test_status_lists_every_model_and_an_unknown_one_is_refused(two_models_app, embedded, tiny):
    client = two_models_app.extensions["socketio"].test_client(two_models_app)
    [status] = payloads(client.get_received(), "status")
    assert status["model"] == embedded.name
    assert [m["model"] for m in status["models"]] == [embedded.name, tiny.name]
    assert [m["parameters"] for m in status["models"]] == [count_parameters(embedded.model),
                                                           count_parameters(tiny.model)]
    assert two_models_app.test_client().get("/healthz").get_json()["models"][1]["ready"] is True
    for event in ("suggest", "prime", "distribution"):
        client.emit(event, {"id": "x", "text": "Hi", "settings": {"model": "gpt-5"}})
        [error] = payloads(wait_for(client, "x", event="error"), "error", "x")
        assert error["field"] == "settings.model" and "tiny-gpt2" in error["message"]
    client.emit("score", {"id": "s", "text": "Hello there", "model": tiny.name})
    [tiny_score] = payloads(wait_for(client, "s", event="score"), "score", "s")
    assert tiny_score["perplexity"] == pytest.approx(Engine(tiny).score("Hello there")[0]["perplexity"], rel=1e-4)


def test_the_memory_budget_loads_what_fits_and_reports_the_rest(tmp_path, embedded):
    folders = []
    for index, width in enumerate((64, 256)):
        model = build_tiny_gpt2(embedded.tokenizer, n_embd=width, seed=index)
        folder = tmp_path / f"gpt-{width}"
        model.save_pretrained(folder)
        embedded.tokenizer.save_pretrained(folder)
        folders.append(str(folder))
    sizes = [estimate_weight_bytes(ModelSpec(Path(f).name, f, "local"), "float32") for f in folders]
    assert sizes[1] == count_parameters(build_tiny_gpt2(embedded.tokenizer, n_embd=256)) * 4
    budget_mb = (sizes[0] >> 20) + 4  # room for the small one only
    assert sizes[0] < budget_mb << 20 < sizes[1]
    app = make_app(None, MODEL=",".join(folders), DEVICE="cpu", DTYPE="float32", MODELS_MEMORY_MB=budget_mb)
    models = app.extensions["tabwrite"]
    try:
        deadline = time.monotonic() + 60
        while models.status()["models"][1]["error"] is None and time.monotonic() < deadline:
            time.sleep(0.05)
        small, big = models.status()["models"]
        assert small["ready"] and not big["ready"] and "was not loaded" in big["error"]
        client = connect(app)
        client.emit("suggest", {"id": "x", "text": "Hi", "settings": {"model": "gpt-256"}})
        [error] = payloads(wait_for(client, "x", event="error"), "error", "x")
        assert error["field"] == "settings.model" and "not available" in error["message"]
    finally:
        models.stop()
