"""Every cost bounded and every failure its own, in the engine: sampling guards, a failing option set, beam bounds."""
import math

import pytest
import torch

from webapp.generation import beams
from webapp.generation.choosing import Chooser
from webapp.generation.engine import Engine
from webapp.generation.sampling import candidates, reshape
from webapp.generation.settings import TEMPERATURE_FLOOR, SamplingSettings
from webapp.web.protocol import ProtocolError, parse_settings

TEXT = "The old bridge over the river was built"


@pytest.fixture(scope="module")
def engine(embedded):
    return Engine(embedded)


@pytest.mark.parametrize("temperature", [1e-40, 1e-5, TEMPERATURE_FLOOR / 2])
def test_a_temperature_below_the_floor_is_refused_by_name(temperature):
    with pytest.raises(ProtocolError) as refused:
        parse_settings({"temperature": temperature})
    assert refused.value.field == "settings.temperature"
    assert f"0 (greedy) or from {TEMPERATURE_FLOOR}" in str(refused.value)
    assert parse_settings({"temperature": 0}).temperature == 0
    assert parse_settings({"temperature": TEMPERATURE_FLOOR}).temperature == TEMPERATURE_FLOOR


def test_sampling_at_the_floor_and_on_broken_logits_stays_a_distribution():
    logits = torch.randn(3, 500, generator=torch.Generator().manual_seed(0)) * 30
    logits[1, 7] = float("inf")  # a row a broken model could give
    logits[2] = float("nan")
    for settings in (SamplingSettings(temperature=TEMPERATURE_FLOOR, top_k=0, top_p=1.0),
                     SamplingSettings(temperature=TEMPERATURE_FLOOR), SamplingSettings(temperature=2.0, top_k=0)):
        ids, probabilities = candidates(logits.clone(), settings)
        assert torch.isfinite(probabilities).all()
        assert torch.allclose(probabilities.sum(dim=-1), torch.ones(3))
        shaped = reshape(logits.clone(), settings)
        assert torch.isfinite(shaped).all()
    # the healthy row is shaped as it would be alone
    alone = candidates(logits[:1].clone(), SamplingSettings(temperature=0.7))[1]
    assert torch.equal(candidates(logits.clone(), SamplingSettings(temperature=0.7))[1][:1], alone)


def test_the_distribution_never_holds_nan(engine):
    logits = torch.full((engine.model.config.vocab_size,), float("nan"))
    answer = engine.distribution(logits, SamplingSettings())
    values = [token[key] for token in answer["tokens"] for key in ("prob", "shaped")]
    values += [answer["shown_mass"], answer["shown_shaped_mass"]]
    assert all(math.isfinite(value) for value in values)


def test_a_set_whose_choice_fails_fails_alone_and_the_others_choose_as_alone(engine, monkeypatch):
    settings = SamplingSettings(n=2, seed=3, length=4, stop_at="length")
    together = [engine.start(text, settings)[0] for text in (TEXT, "Once upon a time", "Dear diary")]
    alone = [engine.start(text, settings)[0] for text in (TEXT, "Once upon a time", "Dear diary")]
    doomed = together[1]
    choose = Chooser._choose

    def fault_for_one(chooser, generation, logits):  # the injected fault: one set's choice raises
        if generation is doomed:
            raise RuntimeError("injected sampling fault")
        return choose(chooser, generation, logits)

    monkeypatch.setattr(Chooser, "_choose", fault_for_one)
    doomed.settings = SamplingSettings(n=2, seed=3, length=4, stop_at="length", no_repeat_ngram=2)  # chosen alone
    logits = torch.randn(6, engine.model.config.vocab_size, generator=torch.Generator().manual_seed(1)) * 3
    deltas = engine.chooser.sample_many(together, logits)
    assert deltas[1] == ["", ""] and doomed.finished and isinstance(doomed.failure, RuntimeError)
    apart = [engine.chooser.sample(generation, part) for generation, part in zip(alone, logits.split(2))]
    assert deltas[0] == apart[0] and deltas[2] == apart[2]
    assert together[0].failure is None and together[2].failure is None


def test_a_group_whose_sampling_fails_together_is_chosen_again_one_by_one(engine, monkeypatch):
    settings = SamplingSettings(n=1, seed=5, length=4, stop_at="length")
    together = [engine.start(text, settings)[0] for text in (TEXT, "Once upon a time")]
    alone = [engine.start(text, settings)[0] for text in (TEXT, "Once upon a time")]
    monkeypatch.setattr(Chooser, "_choose_together", lambda *args: (_ for _ in ()).throw(RuntimeError("injected")))
    logits = torch.randn(2, engine.model.config.vocab_size, generator=torch.Generator().manual_seed(2)) * 3
    deltas = engine.chooser.sample_many(together, logits)
    assert deltas == [engine.chooser.sample(generation, part) for generation, part in zip(alone, logits.split(1))]
    assert all(generation.failure is None for generation in together)


def test_a_beam_search_that_fails_fails_its_set_alone(engine, monkeypatch):
    monkeypatch.setattr(beams, "beam_search", lambda *args: (_ for _ in ()).throw(RuntimeError("injected")))
    generation, deltas = engine.start(TEXT, SamplingSettings(n=2, mode="beam", beams=2, length=4))
    assert deltas == ["", ""] and generation.finished and generation.failure is not None


def test_beam_search_stops_at_the_engines_bound_and_says_time(embedded):
    engine = Engine(embedded, beam_seconds=0.0)
    generation, deltas = engine.start(TEXT, SamplingSettings(n=2, mode="beam", beams=4, length=16, max_time=30))
    assert generation.finishes() == ["time", "time"] and deltas == ["", ""]


def test_beam_search_is_given_its_time_and_reads_a_bounded_prompt(engine, monkeypatch):
    seen = []
    generate = engine.model.generate

    def spy(inputs, **arguments):
        seen.append((inputs.shape[1], arguments.get("max_time")))
        return generate(inputs, **arguments)

    monkeypatch.setattr(engine.model, "generate", spy)
    long_text = " ".join([TEXT] * 120)  # about a thousand tokens: more than one pass's work for 8 beams
    settings = SamplingSettings(n=2, mode="beam", beams=8, length=2, max_time=0.5)
    engine.start(long_text, settings)
    [(read, seconds)] = seen
    assert read == int(engine.pass_work / engine.loaded.parameters / 8) == beams.prompt_tokens(engine, 8)
    assert read * 8 * engine.loaded.parameters <= engine.pass_work, "beams x prompt within one pass's work"
    assert 0 < seconds <= 0.5, "the request's own max_time, less what has passed"
    assert beams.beam_arguments(settings, 2, 4)["num_beams"] == 8 and "max_time" not in beams.beam_arguments(
        settings, 2, 4)


def test_a_long_text_is_scored_a_pass_at_a_time_and_scores_as_it_would_at_once(embedded):
    text = " ".join([TEXT, "and the town grew up around it, street by street, over three hundred years."] * 12)
    at_once = Engine(embedded).score(text)[0]
    engine = Engine(embedded, pass_work=embedded.parameters * 64)  # at most 64 tokens read a pass
    previous, passes = None, 0
    while (ahead := engine.score_ahead(text, previous)) is not None:
        passes += 1
        assert len(ahead.ids) == 64 * passes, "each pass reads its share and keeps what came before"
        previous = ahead
    in_passes = engine.score(text, previous)[0]
    assert passes >= 3 and len(in_passes["tokens"]) == len(at_once["tokens"]) > 64 * passes
    for mine, theirs in zip(in_passes["tokens"], at_once["tokens"]):
        assert mine["text"] == theirs["text"] and mine["logprob"] == pytest.approx(theirs["logprob"], abs=1e-3)
    assert in_passes["perplexity"] == pytest.approx(at_once["perplexity"], rel=1e-4)
    assert engine.score_ahead("A short one.", None) is None, "a text that fits one pass is scored at once"
