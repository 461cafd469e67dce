"""When a step ends: length, time, end of text, sentence, paragraph."""
from webapp.generation.stopping import StepStop

EOS = frozenset({0})


def rule(stop_at="sentence", length=10, deadline=100.0):
    return StepStop(length=length, deadline=deadline, stop_at=stop_at, eos_ids=EOS)


def test_goes_on_mid_phrase():
    assert rule().reason(5, 3, " the quick brown", now=1.0) is None


def test_length():
    assert rule(length=3).reason(5, 3, " the quick brown", now=1.0) == "length"


def test_time():
    assert rule(deadline=1.0).reason(5, 1, " the", now=1.5) == "time"


def test_end_of_text_wins():
    assert rule(length=1).reason(0, 1, "", now=200.0) == "eos"


def test_context_limit():
    assert rule().reason(5, 1, " the", now=1.0, at_context_limit=True) == "context"


def test_sentence_end():
    assert rule().reason(5, 4, " it rained.", now=1.0) == "sentence"
    assert rule().reason(5, 4, ' she said "stop!"', now=1.0) == "sentence"
    assert rule().reason(5, 4, " really? ", now=1.0) == "sentence"
    assert rule().reason(5, 4, "日本です。", now=1.0) == "sentence"


def test_lone_punctuation_is_not_a_sentence():
    assert rule().reason(5, 1, ".", now=1.0) is None


def test_paragraph_end_also_ends_a_sentence_step():
    assert rule().reason(5, 4, " the end\n", now=1.0) == "paragraph"


def test_paragraph_mode_ignores_full_stops():
    assert rule("paragraph").reason(5, 4, " it rained.", now=1.0) is None
    assert rule("paragraph").reason(5, 5, " it rained.\n\n", now=1.0) == "paragraph"


def test_length_mode_ignores_punctuation():
    assert rule("length").reason(5, 4, " it rained.\n", now=1.0) is None
