"""Random payloads for every client event: always a clean `error` or a valid reply, never a crash."""
import logging
import time

import pytest
from conftest import connect, make_app, payloads, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from webapp.generation.settings import TEMPERATURE_FLOOR
from webapp.web import protocol

ERROR_CODES = {protocol.INVALID, protocol.BUSY, protocol.UNKNOWN_PARENT, protocol.INTERNAL, protocol.RATE_LIMITED}

# Any characters, with lone surrogates (half an emoji), NUL and line separators made common.
# (st.text never yields surrogates, so the characters are joined here.)
any_text = st.lists(st.characters() | st.sampled_from(["\ud83d", "\ude00", "\x00", "\u2028"]), max_size=40).map("".join)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
setting_values = st.dictionaries(
    st.sampled_from(["n", "temperature", "top_k", "top_p", "length", "max_time", "stop_at", "seed", "mode", "beams",
                     "no_repeat_ngram", "model", "bogus"]),
    json_values | st.integers(-5, 70) | st.floats(-1, 3)
    | st.sampled_from(["sentence", "length", "word", "beam", "greedy", "sample", "tiny-gpt2"]),
    max_size=5,
)
# Values at the edges of what is allowed, made common: a temperature at its floor, beams x length at their caps
extreme_settings = st.fixed_dictionaries({}, optional={
    "temperature": st.sampled_from([0, TEMPERATURE_FLOOR, TEMPERATURE_FLOOR * 1.001, 2.0]),
    "top_k": st.sampled_from([0, 1, 1000]), "top_p": st.sampled_from([0.01, 1.0]), "n": st.sampled_from([1, 5]),
    "mode": st.sampled_from(["beam", "sample", "greedy"]), "beams": st.sampled_from([2, 8]),
    "length": st.sampled_from([1, 64]), "no_repeat_ngram": st.sampled_from([0, 6]),
    "max_time": st.sampled_from([0.1, 30.0]), "stop_at": st.sampled_from(["length", "sentence"])})
ids = st.text(max_size=70) | st.integers(-10, 10**20) | json_values
# Payloads shaped like the real ones, with every field free to be wrong, and anything at all.
payload_strategy = st.one_of(
    json_values,
    st.fixed_dictionaries({"id": st.text(min_size=1, max_size=8), "text": st.text(max_size=200),
                           "settings": extreme_settings}),
    st.fixed_dictionaries({"id": st.text(min_size=1, max_size=8), "text": any_text, "parent": st.just("x"),
                           "settings": st.fixed_dictionaries({"length": st.integers(1, 3)})}),
    st.fixed_dictionaries({"id": ids}, optional={"text": st.text(max_size=200) | any_text | json_values,
                                                 "settings": setting_values | json_values,
                                                 "n": json_values | st.integers(-2, 8),
                                                 "parent": ids}),
)


class ErrorLog(logging.Handler):
    """Collects every ERROR logged anywhere while the fuzzer runs."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def wait_for_end(client, request_id, timeout=30):
    """A request's events up to its `done` or `error`."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen.extend(client.get_received())
        if any(e["name"] in ("done", "error") and e["args"][0].get("id") == request_id for e in seen):
            return seen
        time.sleep(0.01)
    raise AssertionError(f"request {request_id!r} never ended: {seen}")


@pytest.fixture(scope="module")
def error_log():
    """Every ERROR logged while the module runs, the model thread's included."""
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    yield errors
    logging.getLogger().removeHandler(errors)


@pytest.fixture(scope="module")
def fuzz_app(tiny, error_log):
    app = make_app(tiny, REQUESTS_PER_MINUTE=10**6, MAX_QUEUE=10**6)
    yield app
    app.extensions["tabwrite"].scheduler.stop()


@pytest.mark.parametrize("event", protocol.CLIENT_EVENTS)
@settings(max_examples=150, deadline=None, derandomize=True,  # the same examples on every run
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(payload=payload_strategy)
def test_any_payload_gets_a_clean_answer(fuzz_app, error_log, event, payload):
    client = fuzz_app.extensions["socketio"].test_client(fuzz_app)
    client.get_received()
    client.emit(event, payload)
    replies = client.get_received()
    for reply in payloads(replies, "error"):
        assert reply["code"] in ERROR_CODES and isinstance(reply["message"], str) and reply["message"]
        assert reply["id"] is None or (isinstance(reply["id"], str) and len(reply["id"]) <= protocol.MAX_ID_CHARS)
    if not isinstance(payload, dict):
        assert payloads(replies, "error"), "a payload that is not an object is refused"
    assert all(r["name"] in protocol.SERVER_EVENTS for r in replies)
    assert client.is_connected(), "bad input never drops the connection"
    if event == protocol.SUGGEST and not payloads(replies, "error"):  # accepted: let the model read it
        replies = wait_for_end(client, protocol.request_id_of(payload))
        assert not payloads(replies, "error"), "an accepted request is written, not failed"
    client.disconnect()
    assert not error_log.records, [r.getMessage() for r in error_log.records]


def test_after_the_fuzzing_the_server_still_writes(fuzz_app, error_log):
    client = connect(fuzz_app)
    client.emit("suggest", {"id": "after", "text": "Hello", "settings": {"temperature": 0, "length": 2}})
    [done] = payloads(wait_for(client, "after"), "done", "after")
    assert len(done["options"]) == 3
    assert not error_log.records, [r.getMessage() for r in error_log.records]
