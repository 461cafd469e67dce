"""No request loses its turn: the scheduler steps every writing request in every turn, and beam search, which
cannot be paused, takes one call of its own a turn (bounded by the engine's beam_seconds), never the others'."""
import time

from conftest import connect, make_app, payloads, wait_for

from webapp.serving import scheduler as scheduler_module

HONEST = {"n": 3, "length": 24, "stop_at": "length", "max_time": 30}
LONG_TEXT = " ".join(["The history of the old town begins with a bridge over the river."] * 40)


class Timeline:
    """Which requests each model call of a scheduler served, and in which turn."""

    def __init__(self, scheduler, monkeypatch):
        self.turn, self.calls = 0, []  # (turn, "start" or "step", request ids)
        turn, run_model = scheduler._turn, scheduler._run_model

        def counted_turn():
            self.turn += 1
            return turn()

        def recorded(call, tasks):
            self.calls.append((self.turn, "start" if call == scheduler._start_call else "step",
                               [task.id for task in tasks]))
            return run_model(call, tasks)

        monkeypatch.setattr(scheduler, "_turn", counted_turn)
        monkeypatch.setattr(scheduler, "_run_model", recorded)

    def turns_of(self, request_id):
        return [turn for turn, _, ids in self.calls if request_id in ids]


def test_beam_searches_and_a_crowd_of_newcomers_never_take_a_writing_requests_turn(embedded, monkeypatch):
    monkeypatch.setattr(scheduler_module, "PREFILL_SLICE", 0.05)  # newcomers are read over several turns
    app = make_app(embedded)
    scheduler = app.extensions["tabwrite"].scheduler
    scheduler.engine.beam_seconds = 0.2
    try:
        timeline = Timeline(scheduler, monkeypatch)
        honest = [connect(app) for _ in range(3)]
        beams = [connect(app) for _ in range(2)]
        for index, student in enumerate(honest):
            student.emit("suggest", {"id": f"h{index}", "text": f"Student {index} writes that the river",
                                     "settings": {**HONEST, "seed": index}})
        for index, student in enumerate(beams):
            student.emit("suggest", {"id": f"b{index}", "text": LONG_TEXT, "settings": {
                "mode": "beam", "n": 4, "beams": 8, "length": 64, "max_time": 30}})
        newcomers = [connect(app) for _ in range(12)]  # a crowd arrives while the others write
        for index, tab in enumerate(newcomers):
            tab.emit("suggest", {"id": f"c{index}", "text": f"Newcomer {index} " + LONG_TEXT[:300],
                                 "settings": {"length": 4, "stop_at": "length"}})
        for index, student in enumerate(honest):
            wait_for(student, f"h{index}")
        for index, student in enumerate(beams):
            wait_for(student, f"b{index}")
        for index, tab in enumerate(newcomers):
            wait_for(tab, f"c{index}")
    finally:
        scheduler.stop()
    for index in range(3):
        turns = timeline.turns_of(f"h{index}")
        assert turns == list(range(turns[0], turns[0] + len(turns))), f"h{index} lost a turn: {turns}"
    beam_calls = [(turn, kind, ids) for turn, kind, ids in timeline.calls if any(i.startswith("b") for i in ids)]
    assert beam_calls and all(len(ids) == 1 for _, _, ids in beam_calls), "a beam search's call is its own"
    steps = [turn for turn, kind, _ in beam_calls if kind == "step"]
    assert len(steps) == len(set(steps)), "one beam-search step a turn (a new one's first is read like a prompt)"


def test_a_long_text_is_scored_in_passes_between_turns_and_answered_once(embedded, monkeypatch):
    app = make_app(embedded)
    scheduler = app.extensions["tabwrite"].scheduler
    scheduler.engine.pass_work = embedded.parameters * 64  # at most 64 tokens a pass
    timeline, passes = Timeline(scheduler, monkeypatch), []
    score_ahead = scheduler.engine.score_ahead
    monkeypatch.setattr(scheduler.engine, "score_ahead",
                        lambda *args: passes.append(timeline.turn) or score_ahead(*args))
    try:
        client = connect(app)
        client.emit("score", {"id": "long", "text": LONG_TEXT})
        answers = payloads(wait_for(client, "long", event="score"), "score", "long")
    finally:
        scheduler.stop()
    assert len(answers) == 1 and len(answers[0]["tokens"]) > 64 * 4
    assert len(passes) >= 5, "read a pass at a time"


def test_requests_waiting_for_the_model_are_told_their_place_in_line(embedded, monkeypatch):
    monkeypatch.setattr(scheduler_module, "PREFILL_SLICE", 0.001)  # one reading pass a turn
    monkeypatch.setattr(scheduler_module, "READ_TOGETHER_WORK", 1.0)  # each request read alone
    app = make_app(embedded)
    scheduler = app.extensions["tabwrite"].scheduler
    start_call, first = scheduler._start_call, []

    def slow_first(tasks):  # while the first prompt is read, the rest of the class arrives
        if not first:
            first.append(tasks[0].id)
            time.sleep(0.5)
        return start_call(tasks)

    monkeypatch.setattr(scheduler, "_start_call", slow_first)
    try:
        students = [connect(app) for _ in range(4)]
        for index, student in enumerate(students):
            student.emit("suggest", {"id": f"q{index}", "text": f"Student {index} writes", "settings": {
                "length": 2, "stop_at": "length", "temperature": 0}})
            time.sleep(0.05)
        events = [wait_for(student, f"q{index}") for index, student in enumerate(students)]
    finally:
        scheduler.stop()
    lines = [[queued["position"] for queued in payloads(seen, "queued")] for seen in events]
    assert lines[0] == [], "the first was read at once"
    assert lines[3] and lines[3] == sorted(lines[3], reverse=True) and lines[3][-1] == 2, lines
    for seen in events:  # never after its first words
        names = [event["name"] for event in seen]
        assert "queued" not in names[names.index("delta"):] if "delta" in names else True
