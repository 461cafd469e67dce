"""No request loses its turn: the scheduler steps every writing request in every turn, and beam search, which
cannot be paused, takes one call of its own a turn (bounded by the engine's beam_seconds), never the others'."""
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
        crowd, beams = connect(app), [connect(app) for _ in range(2)]
        for index, student in enumerate(honest):
            student.emit("suggest", {"id": f"h{index}", "text": f"Student {index} writes that the river",
                                     "settings": {**HONEST, "seed": index}})
        for index, student in enumerate(beams):
            student.emit("suggest", {"id": f"b{index}", "text": LONG_TEXT, "settings": {
                "mode": "beam", "n": 4, "beams": 8, "length": 64, "max_time": 30}})
        for index in range(12):  # one tab's requests replace each other: twelve tabs of one crowd
            tab = connect(app)
            tab.emit("suggest", {"id": f"c{index}", "text": f"Newcomer {index} " + LONG_TEXT[:300],
                                 "settings": {"length": 4, "stop_at": "length"}})
        for index, student in enumerate(honest):
            wait_for(student, f"h{index}")
        for index, student in enumerate(beams):
            wait_for(student, f"b{index}")
        assert crowd.is_connected()
    finally:
        scheduler.stop()
    for index in range(3):
        turns = timeline.turns_of(f"h{index}")
        assert turns == list(range(turns[0], turns[0] + len(turns))), f"h{index} lost a turn: {turns}"
    beam_calls = [(turn, ids) for turn, kind, ids in timeline.calls if any(i.startswith("b") for i in ids)]
    assert beam_calls and all(len(ids) == 1 for _, ids in beam_calls), "a beam search's call is its own"
    turns_with_beams = [turn for turn, _ in beam_calls]
    assert len(turns_with_beams) == len(set(turns_with_beams)), "one beam-search call a turn"


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
    assert len(passes) >= 5 and len(set(passes)) == len(passes), "one pass a turn"
