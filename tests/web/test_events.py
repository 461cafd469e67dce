"""The protocol through the real app and Flask-SocketIO's test client, on real models.

Tests that must catch a request while it is still running use the embedded model
and 64-token options (seconds of work); the others use the tiny GPT-2 for speed.
"""
import contextlib
import dataclasses
import math
import random
import time

import pytest
from conftest import FailingModel, connect, make_app, payloads, wait_for

from webapp.generation import kvcache

GREEDY = {"temperature": 0, "stop_at": "length"}


def test_connect_sends_model_status(tiny_app):
    client = tiny_app.extensions["socketio"].test_client(tiny_app)
    [status] = payloads(client.get_received(), "status")
    assert status["ready"] is True
    assert status["model"] == "tiny-gpt2"
    assert status["device"] == "cpu" and status["dtype"] == "float32"


def test_suggest_streams_deltas_then_done(embedded_app):
    client = connect(embedded_app)
    client.emit("suggest", {"id": "s1", "text": "The weather is beaut", "settings": {"n": 3, "seed": 1}})
    events = wait_for(client, "s1")
    deltas = payloads(events, "delta", "s1")
    [done] = payloads(events, "done", "s1")
    assert len(deltas) >= 2, "options should arrive token by token"
    assert all(len(d["deltas"]) == 3 for d in deltas)
    streamed = ["".join(d["deltas"][i] for d in deltas) for i in range(3)]
    assert streamed == done["options"]
    assert all(reason in ("length", "sentence", "paragraph", "eos", "time") for reason in done["finish"])
    assert done["stats"]["healed"] == " beaut"
    assert done["stats"]["first_delta_ms"] > 0
    assert [e["name"] for e in events][-1] == "done"


def test_extend_makes_every_option_longer_keeping_the_old_text(embedded_app):
    client = connect(embedded_app)
    client.emit("suggest", {"id": "a", "text": "My plan for the weekend is", "settings": {"seed": 3, "length": 6}})
    [first] = payloads(wait_for(client, "a"), "done", "a")
    client.emit("extend", {"id": "b", "parent": "a"})
    events = wait_for(client, "b")
    [second] = payloads(events, "done", "b")
    for old, new, reason in zip(first["options"], second["options"], second["finish"]):
        assert new.startswith(old)
        assert len(new) > len(old) or reason == "eos"
    streamed = ["".join(d["deltas"][i] for d in payloads(events, "delta", "b")) for i in range(3)]
    assert [old + more for old, more in zip(first["options"], streamed)] == second["options"]


def test_extend_of_a_running_request_takes_it_over(embedded_app):
    client = connect(embedded_app)
    client.emit("suggest", {"id": "a", "text": "hello", "settings": {**GREEDY, "length": 64}})
    wait_for(client, "a", event="delta")
    client.emit("extend", {"id": "b", "parent": "a", "settings": {"length": 2}})
    events = wait_for(client, "b")
    [stopped] = payloads(events, "done", "a")
    [extended] = payloads(events, "done", "b")
    assert set(stopped["finish"]) == {"cancelled"}
    assert all(new.startswith(old) for old, new in zip(stopped["options"], extended["options"]))


def test_extend_of_an_unknown_set_is_an_error(tiny_app):
    client = connect(tiny_app)
    client.emit("extend", {"id": "b", "parent": "nope"})
    [error] = payloads(wait_for(client, "b", event="error"), "error", "b")
    assert error["code"] == "unknown_parent" and error["field"] == "parent"


def test_cancel_stops_a_request(embedded_app):
    client = connect(embedded_app)
    client.emit("suggest", {"id": "long", "text": "hello", "settings": {**GREEDY, "length": 64}})
    wait_for(client, "long", event="delta")
    client.emit("cancel", {"id": "long"})
    [done] = payloads(wait_for(client, "long"), "done", "long")
    assert set(done["finish"]) == {"cancelled"}
    assert all(len(option) < 64 * 20 for option in done["options"])


def test_a_new_suggest_replaces_the_running_one(embedded_app):
    client = connect(embedded_app)
    client.emit("suggest", {"id": "old", "text": "hello", "settings": {**GREEDY, "length": 64}})
    wait_for(client, "old", event="delta")
    client.emit("suggest", {"id": "new", "text": "hello again", "settings": {**GREEDY, "length": 3}})
    events = wait_for(client, "new")
    names = [(e["name"], e["args"][0]["id"]) for e in events]
    old_done_at = names.index(("done", "old"))
    assert ("delta", "old") not in names[old_done_at:], "no text for a replaced request after its done"
    [old_done] = payloads(events, "done", "old")
    assert set(old_done["finish"]) == {"cancelled"}


@pytest.mark.parametrize("event, payload, field", [
    ("suggest", {"id": "x", "text": "hi", "settings": {"n": 9}}, "settings.n"),
    ("suggest", {"id": "x", "text": "hi", "settings": {"temperature": "hot"}}, "settings.temperature"),
    ("suggest", {"id": "x", "text": "hi", "settings": {"top_p": 0}}, "settings.top_p"),
    ("suggest", {"id": "x", "text": "hi", "settings": {"top_k": -3}}, "settings.top_k"),
    ("suggest", {"id": "x", "text": "hi", "settings": {"length": 1000}}, "settings.length"),
    ("suggest", {"id": "x", "text": 12}, "text"),
    ("suggest", {"id": "x", "text": "y" * 20001}, "text"),
    ("suggest", "just a string", None),
    ("extend", {"id": "x"}, "parent"),
    ("cancel", {"nothing": 1}, "id"),
])
def test_invalid_payloads_get_an_error_and_the_connection_stays(tiny_app, event, payload, field):
    client = connect(tiny_app)
    client.emit(event, payload)
    [error] = payloads(client.get_received(), "error")
    assert error["code"] == "invalid"
    assert error["field"] == field
    assert error["message"]
    assert client.is_connected()
    client.emit("suggest", {"id": "ok", "text": "still here", "settings": {**GREEDY, "length": 2}})
    assert payloads(wait_for(client, "ok"), "done", "ok")


def test_two_clients_each_get_only_their_own_streams(tiny_app):
    alice, bob = connect(tiny_app), connect(tiny_app)
    alice.emit("suggest", {"id": "alice-1", "text": "alice writes", "settings": {**GREEDY, "length": 20}})
    bob.emit("suggest", {"id": "bob-1", "text": "bob writes", "settings": {**GREEDY, "length": 20, "n": 2}})
    alice_events = wait_for(alice, "alice-1")
    bob_events = wait_for(bob, "bob-1")
    assert {e["args"][0]["id"] for e in alice_events} == {"alice-1"}
    assert {e["args"][0]["id"] for e in bob_events} == {"bob-1"}
    assert all(len(d["deltas"]) == 3 for d in payloads(alice_events, "delta"))
    assert all(len(d["deltas"]) == 2 for d in payloads(bob_events, "delta"))


def test_interleaving_is_fair_between_clients(embedded_app):
    alice, bob = connect(embedded_app), connect(embedded_app)
    alice.emit("suggest", {"id": "a", "text": "first", "settings": {**GREEDY, "length": 40}})
    wait_for(alice, "a", event="delta")
    bob.emit("suggest", {"id": "b", "text": "second", "settings": {**GREEDY, "length": 2}})
    wait_for(bob, "b")
    # bob's short request finished while alice's long one was still being written
    assert not payloads(alice.get_received(), "done", "a")
    wait_for(alice, "a")


def test_a_disconnected_client_leaves_no_work(embedded_app):
    scheduler = embedded_app.extensions["tabwrite"].scheduler
    leaving = connect(embedded_app)
    leaving.emit("suggest", {"id": "gone", "text": "bye", "settings": {**GREEDY, "length": 64}})
    wait_for(leaving, "gone", event="delta")
    leaving.disconnect()
    staying = connect(embedded_app)
    staying.emit("suggest", {"id": "next", "text": "hi", "settings": {**GREEDY, "length": 2}})
    wait_for(staying, "next")
    assert not [task for task in scheduler.tasks if task.id == "gone"]
    assert not [key for key in scheduler.finished if key[1] == "gone"]


def test_a_full_queue_answers_busy(embedded):
    app = make_app(embedded, MAX_QUEUE=1)
    try:
        first, second = connect(app), connect(app)
        first.emit("suggest", {"id": "a", "text": "one", "settings": {**GREEDY, "length": 64}})
        wait_for(first, "a", event="delta")
        second.emit("suggest", {"id": "b", "text": "two"})
        [error] = payloads(second.get_received(), "error", "b")
        assert error["code"] == "busy"
        assert "try again" in error["message"]
    finally:
        app.extensions["tabwrite"].scheduler.stop()


def test_old_sets_lose_their_cache_over_budget_but_still_extend(tiny):
    app = make_app(tiny, KV_CACHE_MB=0)
    try:
        client = connect(app)
        client.emit("suggest", {"id": "a", "text": "budget", "settings": {**GREEDY, "length": 3}})
        [first] = payloads(wait_for(client, "a"), "done", "a")
        [generation] = app.extensions["tabwrite"].scheduler.finished.values()
        assert generation.cache is None
        client.emit("extend", {"id": "b", "parent": "a"})
        [second] = payloads(wait_for(client, "b"), "done", "b")
        assert all(new.startswith(old) for old, new in zip(first["options"], second["options"]))
    finally:
        app.extensions["tabwrite"].scheduler.stop()


def test_healthz_reports_the_model(tiny_app):
    body = tiny_app.test_client().get("/healthz").get_json()
    assert body["ready"] is True
    assert body["model"] == "tiny-gpt2"
    assert body["device"] == "cpu" and body["dtype"] == "float32"
    assert body["queue"] == {"running": 0, "waiting": 0}


def test_page_has_the_editor_and_settings(tiny_app):
    html = tiny_app.test_client().get("/").get_data(as_text=True)
    assert 'role="textbox"' in html and 'role="listbox"' in html
    for name in ("n", "temperature", "top_k", "top_p", "length"):
        assert f'name="{name}"' in html
    assert "/vendor/socket.io/socket.io.min.js" in html


def test_a_model_failure_mid_stream_is_an_error_and_the_next_request_works(tiny, caplog):
    app = make_app(dataclasses.replace(tiny, model=FailingModel(tiny.model)))
    try:
        client = connect(app)
        client.emit("suggest", {"id": "boom", "text": "hello", "settings": {**GREEDY, "length": 10}})
        events = wait_for(client, "boom", event="error")
        [error] = payloads(events, "error", "boom")
        assert error["code"] == "internal"
        assert payloads(events, "delta", "boom"), "the failure came mid-stream, after some text"
        assert "simulated device failure" in caplog.text
        client.emit("suggest", {"id": "fine", "text": "hello", "settings": {**GREEDY, "length": 4}})
        [done] = payloads(wait_for(client, "fine"), "done", "fine")
        assert len(done["options"]) == 3
    finally:
        app.extensions["tabwrite"].scheduler.stop()


def test_successive_tabs_on_a_growing_document_reuse_the_prompt_and_write_the_same(embedded_app):
    settings = {**GREEDY, "length": 5}
    typing, fresh = connect(embedded_app), connect(embedded_app)
    typing.emit("suggest", {"id": "t1", "text": "The lighthouse keeper climbed the stairs", "settings": settings})
    [first] = payloads(wait_for(typing, "t1"), "done", "t1")
    longer = "The lighthouse keeper climbed the stairs and looked out over the sea"
    typing.emit("suggest", {"id": "t2", "text": longer, "settings": settings})
    [second] = payloads(wait_for(typing, "t2"), "done", "t2")
    fresh.emit("suggest", {"id": "f", "text": longer, "settings": settings})
    [alone] = payloads(wait_for(fresh, "f"), "done", "f")
    assert first["stats"]["reused_tokens"] == 0 and alone["stats"]["reused_tokens"] == 0
    assert second["stats"]["reused_tokens"] >= first["stats"]["prompt_tokens"] - 1, "typed words were read again"
    assert second["options"] == alone["options"]
    scheduler = embedded_app.extensions["tabwrite"].scheduler
    assert len(scheduler.prefixes) == 2
    typing.disconnect()
    wait = 0
    while len(scheduler.prefixes) != 1 and wait < 100:  # the disconnect is applied between steps
        time.sleep(0.05)
        wait += 1
    assert len(scheduler.prefixes) == 1, "a tab that closed leaves no cache behind"


def test_prompt_caches_stay_within_their_budget(embedded):
    app = make_app(embedded, PREFIX_CACHE_MB=1)
    try:
        clients = [connect(app) for _ in range(3)]
        for i, client in enumerate(clients):
            client.emit("suggest", {"id": f"c{i}", "text": "word " * 60, "settings": {**GREEDY, "length": 1}})
            wait_for(client, f"c{i}")
        scheduler = app.extensions["tabwrite"].scheduler
        held = sum(prefix.cache_bytes() for prefix in scheduler.prefixes.values())
        assert held <= 1 << 20 and len(scheduler.prefixes) < 3, "the least recently used were dropped"
    finally:
        app.extensions["tabwrite"].scheduler.stop()


def test_a_primed_text_is_read_before_tab_and_tab_writes_the_same(embedded_app):
    text = "In the valley below the mountains there was a small school with a red door, and every morning"
    settings = {**GREEDY, "length": 4}
    writer, other = connect(embedded_app), connect(embedded_app)
    writer.emit("prime", {"id": "p", "text": text, "settings": settings})
    [primed] = payloads(wait_for(writer, "p", event="primed"), "primed", "p")
    writer.emit("suggest", {"id": "s", "text": text, "settings": settings})
    [done] = payloads(wait_for(writer, "s"), "done", "s")
    assert primed["tokens"] == done["stats"]["prompt_tokens"] - 1 == done["stats"]["reused_tokens"]
    other.emit("suggest", {"id": "o", "text": text, "settings": settings})
    assert payloads(wait_for(other, "o"), "done", "o")[0]["options"] == done["options"]


def test_priming_yields_to_requests(embedded_app):
    long_text = "The tide came in over the sand and the children ran back to the dunes. " * 50  # ~800 tokens
    primer, writer = connect(embedded_app), connect(embedded_app)
    primer.emit("prime", {"id": "slow", "text": long_text})
    writer.emit("suggest", {"id": "now", "text": "Hello", "settings": {**GREEDY, "length": 3}})
    wait_for(writer, "now")
    assert not payloads(primer.get_received(), "primed"), "the request went before the rest of the priming"
    wait_for(primer, "slow", event="primed")


def test_a_bad_prime_is_an_error_and_a_suggest_replaces_a_pending_prime(embedded_app):
    client = connect(embedded_app)
    client.emit("prime", {"id": "p", "text": 42})
    [error] = payloads(wait_for(client, "p", event="error"), "error", "p")
    assert error["field"] == "text"
    client.emit("prime", {"id": "p2", "text": "Some words " * 100})
    client.emit("suggest", {"id": "s", "text": "Other words", "settings": {**GREEDY, "length": 2}})
    events = wait_for(client, "s")
    assert not payloads(events, "primed"), "the TAB took over; the pending prime was dropped"


@contextlib.contextmanager
def counting_calls(engine, name):
    """The size of every call to `engine.<name>` (the real engine runs; the test only counts)."""
    sizes, real = [], getattr(engine, name)

    def recording(items, *more):
        sizes.append(len(items))
        return real(items, *more)

    setattr(engine, name, recording)
    try:
        yield sizes
    finally:
        delattr(engine, name)


def test_requests_of_several_clients_share_each_forward_pass(embedded_app):
    engine = embedded_app.extensions["tabwrite"].scheduler.engine
    with counting_calls(engine, "step_many") as batch_sizes:
        clients = [connect(embedded_app) for _ in range(4)]
        texts = ["The ship left the harbour", "Our school garden grows", "The recipe starts with", "On Mars, the"]
        for i, (client, text) in enumerate(zip(clients, texts)):
            client.emit("suggest", {"id": f"r{i}", "text": text, "settings": {**GREEDY, "length": 12, "n": 2}})
        results = [payloads(wait_for(client, f"r{i}"), "done", f"r{i}")[0] for i, client in enumerate(clients)]
    assert max(batch_sizes) == 4, f"all four wrote in the same passes: {batch_sizes}"
    alone = connect(embedded_app)
    alone.emit("suggest", {"id": "a", "text": texts[1], "settings": {**GREEDY, "length": 12, "n": 2}})
    assert payloads(wait_for(alone, "a"), "done", "a")[0]["options"] == results[1]["options"]


def test_a_class_read_in_several_passes_writes_in_one_stack_made_for_all_of_it(embedded_app, monkeypatch):
    from webapp.serving import scheduler

    # passes of two prompts, one pass between steps: the class joins the writing two by two
    engine = embedded_app.extensions["tabwrite"].scheduler.engine
    monkeypatch.setattr(scheduler, "PREFILL_SLICE", 0.001)
    monkeypatch.setattr(scheduler, "READ_TOGETHER_WORK", engine.loaded.parameters * 20)
    told, stacks = [], []
    start_many, step_many = engine.start_many, engine.step_many

    def slow_first_read(requests):
        if not told and not stacks:
            time.sleep(0.5)  # while the first prompt is read, the rest of the class arrives
            stacks.append(None)
        return start_many(requests)

    def recording(generations, joining=0):
        told.append((len(generations), joining))
        deltas = step_many(generations, joining)
        if engine._stack is not None and all(engine._stack is not stack for stack in stacks):
            stacks.append(engine._stack)
        return deltas

    engine.start_many, engine.step_many = slow_first_read, recording
    try:
        clients = [connect(embedded_app) for _ in range(12)]  # more than a stack's spare rows (8)
        texts = [f"Student {i} writes that the river" for i in range(12)]
        for i, (client, text) in enumerate(zip(clients, texts)):
            client.emit("suggest", {"id": f"r{i}", "text": text, "settings": {**GREEDY, "length": 10, "n": 2}})
        results = [payloads(wait_for(client, f"r{i}"), "done", f"r{i}")[0] for i, client in enumerate(clients)]
    finally:
        del engine.start_many, engine.step_many
    assert sum(told[0]) == 12 and told[0][1] >= 8, f"the first step knew the rest of the class was coming: {told}"
    made = stacks[1:]
    assert len(made) == 1 and made[0].keys[0].shape[0] >= 12, "one stack, made with rows for all twelve"
    alone = connect(embedded_app)
    alone.emit("suggest", {"id": "a", "text": texts[5], "settings": {**GREEDY, "length": 10, "n": 2}})
    assert payloads(wait_for(alone, "a"), "done", "a")[0]["options"] == results[5]["options"]


def test_new_requests_that_read_little_are_read_in_one_pass(embedded_app):
    engine = embedded_app.extensions["tabwrite"].scheduler.engine
    settings = {**GREEDY, "length": 4, "n": 2}
    with counting_calls(engine, "start_many") as passes:
        long_reader, *clients = [connect(embedded_app) for _ in range(4)]
        long_text = "The tide came in over the sand and the children ran back to the dunes. " * 40  # ~650 tokens
        long_reader.emit("suggest", {"id": "long", "text": long_text, "settings": settings})
        texts = ["The ship left the harbour", "Our school garden grows", "On Mars, the"]
        for i, (client, text) in enumerate(zip(clients, texts)):  # they arrive while the long text is read
            client.emit("suggest", {"id": f"r{i}", "text": text, "settings": settings})
        results = [payloads(wait_for(client, f"r{i}"), "done", f"r{i}")[0] for i, client in enumerate(clients)]
        wait_for(long_reader, "long")
    assert passes[0] == 1 and 3 in passes, f"the three short prompts were read together: {passes}"
    alone = connect(embedded_app)
    alone.emit("suggest", {"id": "a", "text": texts[2], "settings": settings})
    assert payloads(wait_for(alone, "a"), "done", "a")[0]["options"] == results[2]["options"]


@pytest.mark.parametrize("weights, expected", [(None, [1, 1, 3]), (774_030_080, [1, 1, 1, 1, 1])],
                         ids=["embedded", "as-heavy-as-gpt2-large"])
def test_long_prompts_of_like_length_are_read_in_one_pass_and_a_short_one_beside_them_is_not(embedded, weights,
                                                                                             expected):
    # a pass reads at most READ_TOGETHER_WORK (weights × padded tokens): a model with GPT-2 large's
    # weight count reads 300-token prompts one by one, as its passes would otherwise last seconds
    app = make_app(dataclasses.replace(embedded, parameters=weights or embedded.parameters))
    try:
        engine = app.extensions["tabwrite"].scheduler.engine
        settings = {**GREEDY, "length": 3, "n": 2}
        paragraph = "The tide came in over the sand and the children ran back to the dunes. "
        long_text = paragraph * 40  # ~650 tokens: read alone while the others arrive
        texts = [f"Story {i}: " + paragraph * 18 + ending for i, ending in  # ~300 tokens each, within a few
                 enumerate(["The end.", "Then it rained all night.", "Nobody saw the boat again."])]
        texts.append("On Mars, the")  # ~4 tokens: beside them it would be read at their cost
        with counting_calls(engine, "start_many") as passes:
            long_reader, *clients = [connect(app) for _ in range(5)]
            long_reader.emit("suggest", {"id": "long", "text": long_text, "settings": settings})
            for i, (client, text) in enumerate(zip(clients, texts)):
                client.emit("suggest", {"id": f"r{i}", "text": text, "settings": settings})
            results = [payloads(wait_for(client, f"r{i}"), "done", f"r{i}")[0] for i, client in enumerate(clients)]
            wait_for(long_reader, "long")
        assert sorted(passes) == expected, f"passes of {passes} prompts"
        assert all(r["stats"]["prompt_tokens"] > 250 for r in results[:3]) and results[3]["stats"]["prompt_tokens"] < 10
        alone = connect(app)
        alone.emit("suggest", {"id": "a", "text": texts[1], "settings": settings})
        assert payloads(wait_for(alone, "a"), "done", "a")[0]["options"] == results[1]["options"]
    finally:
        app.extensions["tabwrite"].scheduler.stop()


def test_score_answers_with_the_documents_perplexity(embedded_app):
    client = connect(embedded_app)
    client.emit("score", {"id": "sc", "text": "Once upon a time there was a princess."})
    [score] = payloads(wait_for(client, "sc", event="score"), "score", "sc")
    assert score["perplexity"] > 1 and len(score["tokens"]) >= 8
    assert all(t["logprob"] <= 0 for t in score["tokens"])
    client.emit("score", {"id": "bad", "text": None})
    assert payloads(wait_for(client, "bad", event="error"), "error", "bad")[0]["field"] == "text"


def test_distribution_reads_the_text_once_and_reshapes_for_new_settings(embedded_app):
    client = connect(embedded_app)
    engine = embedded_app.extensions["tabwrite"].scheduler.engine
    calls = []
    original = engine.next_token_logits
    engine.next_token_logits = lambda *args: calls.append(args[0]) or original(*args)
    try:
        text = "The capital of France is"
        client.emit("distribution", {"id": "d1", "text": text, "settings": {"temperature": 1.0, "top_k": 0,
                                                                              "top_p": 1.0}})
        [wide] = payloads(wait_for(client, "d1", event="distribution"), "distribution", "d1")
        client.emit("distribution", {"id": "d2", "text": text, "settings": {"temperature": 1.0, "top_k": 2}})
        [narrow] = payloads(wait_for(client, "d2", event="distribution"), "distribution", "d2")
    finally:
        del engine.next_token_logits
    assert calls == [text], "the second answer reshaped the kept logits"
    assert wide["tokens"][0]["text"] == narrow["tokens"][0]["text"] == " Paris"
    assert wide["candidates"] == wide["vocabulary"] and narrow["candidates"] == 2
    assert narrow["tokens"][0]["shaped"] > wide["tokens"][0]["shaped"]
    client.emit("distribution", {"id": "bad", "text": text, "settings": {"top_k": -1}})
    assert payloads(wait_for(client, "bad", event="error"), "error", "bad")[0]["field"] == "settings.top_k"


def test_done_says_how_likely_each_option_is_and_which_settings_wrote_it(embedded_app):
    client = connect(embedded_app)
    client.emit("suggest", {"id": "b", "text": "The capital of France is",
                            "settings": {"mode": "beam", "beams": 3, "n": 2, "length": 6}})
    [done] = payloads(wait_for(client, "b"), "done", "b")
    assert len(done["likelihood"]) == 2 and all(item["logprob"] < 0 for item in done["likelihood"])
    assert done["likelihood"][0]["perplexity"] == pytest.approx(math.exp(-done["likelihood"][0]["logprob"]), rel=1e-3)
    assert done["stats"]["settings"]["mode"] == "beam" and done["stats"]["settings"]["beams"] == 3
    client.emit("extend", {"id": "b2", "parent": "b", "settings": {"length": 4}})
    [longer] = payloads(wait_for(client, "b2"), "done", "b2")
    assert all(new.startswith(old) and new != old for old, new in zip(done["options"], longer["options"]))


def test_a_seed_locked_by_the_teacher_gives_the_whole_class_the_same_options(embedded_app):
    embedded_app.extensions["tabwrite.classroom"].set_policy({"defaults": {"seed": 11}, "locked": ["seed"]})
    sampled = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "length": 8, "stop_at": "length", "n": 2}
    answers = []
    for own_seed in (1, 2):
        client = connect(embedded_app)
        client.emit("suggest", {"id": "s", "text": "My favourite animal is",
                                "settings": {**sampled, "seed": own_seed}})
        answers.append(payloads(wait_for(client, "s"), "done", "s")[0])
    assert answers[0]["options"] == answers[1]["options"]
    assert answers[0]["stats"]["settings"]["seed"] == 11


def test_a_class_sending_random_requests_meets_no_model_failure(embedded_app, monkeypatch):
    """Eight tabs suggest, extend, prime and cancel at random on short and long documents; every request ends well."""
    monkeypatch.setattr(kvcache, "SPARE_POSITIONS", 8)  # the batch runs out of columns often: moves and new stacks
    rng = random.Random(11)
    clients = [connect(embedded_app) for _ in range(8)]
    base = "The tide came in over the sand and the children ran back to the dunes. "
    texts = [base * rng.randint(1, 25) + f"Tab {i} says" for i in range(8)]  # about 20 to 450 tokens
    received, latest, parents = [[] for _ in clients], {}, {}
    for k in range(70):
        i = rng.randrange(len(clients))
        settings = {"n": rng.randint(1, 4), "length": rng.randint(1, 12), "temperature": rng.choice([0, 0.8, 1.3]),
                    "seed": k, "stop_at": "length"}
        received[i].extend(clients[i].get_received())
        roll, shown = rng.random(), i in latest and any(d["options"] for d in payloads(received[i], "done", latest[i]))
        if roll < 0.4 and shown:  # like the page: Tab again once options are shown
            clients[i].emit("extend", {"id": f"e{k}", "parent": latest[i], "settings": {"length": settings["length"]}})
            parents[f"e{k}"], latest[i] = latest[i], f"e{k}"
        elif roll < 0.75 or i not in latest:
            texts[i] += rng.choice([" and", " the boat", " came back.", " " + base])
            clients[i].emit("suggest", {"id": f"s{k}", "text": texts[i], "settings": settings})
            latest[i] = f"s{k}"
        elif roll < 0.9:
            clients[i].emit("prime", {"id": f"p{k}", "text": texts[i] + " more", "settings": settings})
        else:
            clients[i].emit("cancel", {"id": latest[i]})
        time.sleep(rng.random() * 0.4)
    for i, request_id in latest.items():
        if not payloads(received[i], "done", request_id):
            received[i].extend(wait_for(clients[i], request_id))
    assert not [payload for events in received for payload in payloads(events, "error")]
    done = {payload["id"]: payload for events in received for payload in payloads(events, "done")}
    assert len(done) >= 30 and parents.keys() & done.keys()
    for request_id, parent in parents.items():  # an extend's options go on from its parent's text
        if request_id in done and parent in done:
            assert all(option.startswith(before)
                       for option, before in zip(done[request_id]["options"], done[parent]["options"]))
