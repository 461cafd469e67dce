"""One request's failure is its own: a fault at any step of the scheduler reaches only the request it hit.

A fault-injecting stand-in wraps one engine method at a time (the one kind of stub these tests use: a
failure that honest input cannot cause), raises once, and the request it hit gets `error`; the loop
keeps serving, and the next student's request gets `done`.
"""
import threading

import pytest
from conftest import connect, make_app, payloads, wait_for

from webapp.serving.scheduler import Scheduler
from webapp.web.protocol import ProtocolError, SuggestRequest

GREEDY = {"temperature": 0, "length": 3, "stop_at": "length"}


def fail_once(monkeypatch, engine, name):
    """Make `engine.name` raise on its first call only; returns the list of calls it saw."""
    original, calls = getattr(engine, name), []

    def faulty(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise RuntimeError(f"injected fault in {name}")
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, name, faulty)
    return calls


@pytest.fixture
def app(tiny):
    app = make_app(tiny)
    yield app
    app.extensions["tabwrite"].scheduler.stop()


def errors_of(events, request_id=None):
    return [(error["id"], error["code"]) for error in payloads(events, "error", request_id)]


def assert_still_serves(app):
    other = connect(app)
    other.emit("suggest", {"id": "after", "text": "Another student writes", "settings": GREEDY})
    events = wait_for(other, "after")
    [done] = payloads(events, "done", "after")
    assert not payloads(events, "error") and done["finish"] == ["length"] * 3


HIT_LENGTH = GREEDY["length"]  # how the injected fault knows the hostile request: the honest one writes 64


def is_the_hit(name, args):
    """Whether an engine call of `name` with `args` is for the hostile request."""
    if name == "prepare":
        return args[1].length == HIT_LENGTH
    if name == "start_many":
        return any(generation.settings.length == HIT_LENGTH for generation, _ in args[0])
    return args[0].settings.length == HIT_LENGTH  # flush(generation)


@pytest.mark.parametrize("name", ["prepare", "start_many", "flush"])
def test_a_fault_while_writing_fails_that_request_alone_while_another_writes_on(embedded_app, monkeypatch, name):
    scheduler = embedded_app.extensions["tabwrite"].scheduler
    honest, hostile = connect(embedded_app), connect(embedded_app)
    honest.emit("suggest", {"id": "honest", "text": "Once upon a time", "settings": {"length": 64, "seed": 1,
                                                                                      "stop_at": "length"}})
    wait_for(honest, "honest", event="delta")
    in_flight, original = [], getattr(scheduler.engine, name)

    def faulty(*args, **kwargs):  # the injected fault: the hostile request's call raises, once
        if is_the_hit(name, args) and not in_flight:
            in_flight.append([task.id for task in scheduler.tasks])
            raise RuntimeError(f"injected fault in {name}")
        return original(*args, **kwargs)

    monkeypatch.setattr(scheduler.engine, name, faulty)
    hostile.emit("suggest", {"id": "hit", "text": "The river ran past the mill", "settings": GREEDY})
    events = wait_for(hostile, "hit", event="error")
    assert errors_of(events, "hit") == [("hit", "internal")] and not payloads(events, "done", "hit")
    assert "honest" in in_flight[0], "the honest request was writing when the fault hit"
    honest_events = wait_for(honest, "honest")
    assert not payloads(honest_events, "error")
    assert len(payloads(honest_events, "done", "honest")[0]["options"]) == 3
    assert_still_serves(embedded_app)


def test_a_fault_in_a_decoding_step_fails_the_requests_in_that_step_and_the_loop_goes_on(app, monkeypatch):
    calls = fail_once(monkeypatch, app.extensions["tabwrite"].scheduler.engine, "step_many")
    student = connect(app)
    student.emit("suggest", {"id": "hit", "text": "The river ran past the mill", "settings": GREEDY})
    events = wait_for(student, "hit", event="error")
    assert calls and errors_of(events, "hit") == [("hit", "internal")]
    assert not payloads(events, "done", "hit")
    assert_still_serves(app)


def test_a_fault_while_extending_fails_the_extend_alone(app, monkeypatch):
    engine = app.extensions["tabwrite"].scheduler.engine
    student = connect(app)
    student.emit("suggest", {"id": "first", "text": "The river ran past the mill", "settings": GREEDY})
    wait_for(student, "first")
    fail_once(monkeypatch, engine, "extend")
    student.emit("extend", {"id": "longer", "parent": "first"})
    assert errors_of(wait_for(student, "longer", event="error"), "longer") == [("longer", "internal")]
    assert_still_serves(app)


@pytest.mark.parametrize("name, event, payload", [
    ("prime", "primed", {"id": "p", "text": "The river ran past the mill and on"}),
    ("score", "score", {"id": "p", "text": "The river ran past the mill"}),
    ("next_token_logits", "distribution", {"id": "p", "text": "The river ran past the"}),
    ("distribution", "distribution", {"id": "p", "text": "The river ran past the"}),
])
def test_a_fault_in_idle_time_work_fails_that_request_alone(app, monkeypatch, name, event, payload):
    engine = app.extensions["tabwrite"].scheduler.engine
    calls = fail_once(monkeypatch, engine, name)
    student = connect(app)
    student.emit(event if event != "primed" else "prime", payload)
    if name == "prime":  # priming is a courtesy: a failed chunk is dropped without a word, the Tab reads the text
        assert_still_serves(app)
        assert calls
        return
    assert errors_of(wait_for(student, "p", event="error"), "p") == [("p", "internal")]
    student.emit(event, {**payload, "id": "again"})
    assert payloads(wait_for(student, "again", event=event), event, "again")
    assert_still_serves(app)


def test_a_fault_while_cancelling_is_reported_and_the_loop_goes_on(app, monkeypatch):
    engine = app.extensions["tabwrite"].scheduler.engine
    fail_once(monkeypatch, engine, "cancel")
    student = connect(app)
    student.emit("suggest", {"id": "long", "text": "Once upon a time", "settings": {"length": 64, "stop_at": "length"}})
    wait_for(student, "long", event="delta")
    student.emit("cancel", {"id": "long"})
    assert ("long", "internal") in errors_of(wait_for(student, "long", event="error"))
    assert_still_serves(app)


def test_only_suggest_and_extend_count_as_waiting_work():
    scheduler = Scheduler(runner=_Idle(), emit=lambda *args, **kwargs: None, max_queue=2)
    for index in range(100):  # a tab closing, cancels, priming, scores and charts fill the inbox, not the queue
        scheduler.cancel(f"sid{index}", "x")
        scheduler.disconnect(f"sid{index}")
    assert scheduler.depth() == 0 and scheduler.load() == {"running": 0, "waiting": 0}
    scheduler.submit("a", SuggestRequest("1", "Hi"))
    scheduler.submit("b", SuggestRequest("2", "Hi"))
    assert scheduler.depth() == 2
    with pytest.raises(ProtocolError) as refused:
        scheduler.submit("c", SuggestRequest("3", "Hi"))
    assert refused.value.code == "busy"


class _Idle:
    """A runner whose loop is never started: commands stay in the inbox, as they do while the model is busy."""

    event = staticmethod(threading.Event)


def test_a_connection_that_drops_mid_request_is_logged_with_its_requests(embedded_app, caplog):
    student = connect(embedded_app)
    student.emit("suggest", {"id": "long", "text": "Once upon a time", "settings": {"length": 64,
                                                                                   "stop_at": "length"}})
    wait_for(student, "long", event="delta")
    with caplog.at_level("WARNING", logger="webapp.serving.scheduler"):
        student.disconnect()
        assert_still_serves(embedded_app)
    assert any("with requests ['long'] in flight" in record.getMessage() for record in caplog.records)
    assert embedded_app.extensions["socketio"].server.eio.ping_timeout == 60, "late pings on a busy machine"
