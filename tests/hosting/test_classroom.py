"""The classroom's pure parts: rate windows, class policy, live figures and the SQLite store."""
import dataclasses

import pytest

from webapp.hosting.metrics import BUCKET_SECONDS, Metrics, percentile
from webapp.hosting.policy import ClassPolicy
from webapp.hosting.store import Store
from webapp.hosting.throttle import SlidingWindow
from webapp.web.protocol import ProtocolError, SamplingSettings, parse_settings


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


def test_sliding_window_allows_the_limit_then_says_how_long_to_wait():
    clock = Clock()
    window = SlidingWindow(3, window=60, clock=clock)
    assert [window.allow("ada") for _ in range(4)] == [True, True, True, False]
    assert window.retry_after("ada") == pytest.approx(60)
    assert window.allow("bob"), "limits are per key"
    clock.now += 30
    assert window.retry_after("ada") == pytest.approx(30)
    clock.now += 30.001
    assert window.allow("ada")


def test_sliding_window_forgets_idle_keys():
    clock = Clock()
    window = SlidingWindow(2, window=10, clock=clock)
    window.hit("visitor")
    clock.now += 11
    assert window.retry_after("visitor") == 0
    assert "visitor" not in window.events


def test_policy_locks_replace_the_students_values_and_keep_the_rest():
    policy = ClassPolicy.from_payload({"defaults": {"length": 8, "temperature": 0.5}, "locked": ["length"]}, 5, 64)
    applied = policy.apply(SamplingSettings(length=30, temperature=1.2, n=2))
    assert (applied.length, applied.temperature, applied.n) == (8, 1.2, 2)
    assert policy.apply_overrides({"length": 20, "top_k": 5}) == {"top_k": 5}
    assert policy.to_payload() == {"defaults": {"length": 8, "temperature": 0.5}, "locked": ["length"],
                                   "caps": {"n": 5, "length": 64}}


@pytest.mark.parametrize("payload, field", [
    ({"defaults": {"max_time": 3}}, "max_time"),
    ({"defaults": {}, "locked": ["length"]}, "length"),
    ({"defaults": {"length": 0}}, "settings.length"),
    ({"defaults": {"n": 4}}, "settings.n"),  # over this server's cap of 3
])
def test_policy_refuses_what_it_cannot_enforce(payload, field):
    with pytest.raises(ProtocolError) as error:
        ClassPolicy.from_payload(payload, 3, 64)
    assert error.value.field == field


def test_policy_caps_number_and_length_of_options():
    policy = ClassPolicy(max_options=2, max_length=10)
    with pytest.raises(ProtocolError, match="at most 2"):
        policy.apply(SamplingSettings(n=3))
    with pytest.raises(ProtocolError, match="at most 10"):
        policy.apply_overrides({"length": 11})
    assert policy.apply(SamplingSettings(n=2, length=10)).n == 2


def test_metrics_summaries_and_history():
    clock = Clock(10_000.0)
    metrics = Metrics(clock)
    metrics.connections(3)
    for wait in (100, 200, 300, 400):
        metrics.request_received(queue_depth=2)
        metrics.request_done(first_delta_ms=wait, new_tokens=30)
    metrics.request_refused_busy()
    summary = metrics.summary()
    assert summary["requests_per_minute"] == 4
    assert summary["tokens_per_second"] == 2.0
    assert summary["first_delta_ms"] == {"p50": 200, "p95": 400, "count": 4}
    assert summary["busy_last_minute"] == 1 and summary["connected"] == 3
    clock.now += 5 * BUCKET_SECONDS
    history = metrics.history()
    assert len(history) == 60
    busy_point = history[-6]
    assert busy_point["requests_per_minute"] == 4 * 60 / BUCKET_SECONDS and busy_point["queue"] == 2
    assert history[-1]["connected"] == 3 and history[-1]["first_delta_p50"] is None
    clock.now += 120
    assert metrics.summary()["requests_per_minute"] == 0


def test_percentile_is_nearest_rank():
    assert percentile([], 50) is None
    assert percentile([5], 95) == 5
    assert percentile(list(range(1, 101)), 95) == 95
    assert percentile(list(range(1, 101)), 50) == 50


def test_store_sessions_documents_and_settings_survive_reopening(tmp_path):
    path = tmp_path / "class.sqlite3"
    store = Store(path)
    token, session = store.create_session("Ada", "owl42")
    document_id = store.publish(session, "A poem.", "gpt2", {"n": 3})
    store.save_setting("policy", {"defaults": {"n": 2}, "locked": ["n"]})

    reopened = Store(path)
    assert reopened.find_session(token, "owl42") == session
    assert reopened.find_session(token, "new-code") is None, "a new class code ends old sessions"
    assert reopened.find_session("forged", "owl42") is None
    document = reopened.document(document_id)
    assert (document.author, document.text, document.model, document.settings) == ("Ada", "A poem.", "gpt2", {"n": 3})
    assert reopened.count_documents(session.student_id) == 1
    assert reopened.load_setting("policy", {}) == {"defaults": {"n": 2}, "locked": ["n"]}
    assert token not in path.read_bytes().decode("latin-1"), "only a hash of the cookie is stored"
    reopened.end_sessions(session.student_id)
    assert reopened.find_session(token, "owl42") is None


def test_document_ids_are_unguessable(tmp_path):
    store = Store(tmp_path / "db.sqlite3")
    _, session = store.create_session("Ada", "")
    ids = {store.publish(session, "x", "m", {}) for _ in range(50)}
    assert len(ids) == 50 and all(len(i) >= 22 for i in ids)  # 128 random bits each


def test_class_defaults_fill_what_a_request_leaves_out():
    policy = ClassPolicy.from_payload({"defaults": {"temperature": 0.3}}, max_options=2, max_length=64)
    base = policy.base()
    assert (base.temperature, base.n, base.top_k) == (0.3, 2, 40), "the server's n=3 shrinks to the cap"
    assert parse_settings({"top_k": 5}, base) == dataclasses.replace(base, top_k=5)
