"""The engine on the real embedded model: exact greedy output, extend, healing, truncation."""
import dataclasses
import math

import pytest
import torch
from conftest import run

from webapp.generation import kvcache
from webapp.generation.engine import Engine
from webapp.web.protocol import SamplingSettings

GREEDY = SamplingSettings(n=1, temperature=0, length=8, stop_at="length", max_time=30)


@pytest.fixture(scope="module")
def engine(embedded):
    # beam search compared with generate's: no engine time bound (tests/generation/test_bounds.py checks it)
    return Engine(embedded, beam_seconds=math.inf)


def finish_step(engine, generation):
    deltas = []
    while not generation.finished:
        deltas.append(engine.step(generation))
    return deltas


def test_greedy_equals_generate_without_healing(engine):
    # a single-token prompt is not healed, so this is plain generate() token for token
    generation, _ = run(engine, "Once", GREEDY)
    assert generation.healed == ""
    expected = engine.model.generate(torch.tensor([generation.prompt_ids]), max_new_tokens=8, do_sample=False,
                                     attention_mask=torch.ones(1, 1, dtype=torch.long))
    assert generation.options[0].tokens == expected[0, 1:].tolist()


def test_greedy_equals_generate_after_the_healed_token(engine):
    generation, _ = run(engine, "Once upon a time there was a", GREEDY)
    assert generation.healed == " a"
    prompt = torch.tensor([generation.prompt_ids + generation.options[0].tokens[:1]])
    expected = engine.model.generate(prompt, max_new_tokens=7, do_sample=False,
                                     attention_mask=torch.ones_like(prompt))
    assert generation.options[0].tokens[1:] == expected[0, prompt.shape[1]:].tolist()


def test_n_options_share_one_prefill_and_match_a_single_one(engine):
    single, _ = run(engine, "The capital of France is", GREEDY)
    many, _ = run(engine, "The capital of France is", dataclasses.replace(GREEDY, n=3))
    assert [o.tokens for o in many.options] == [single.options[0].tokens] * 3


def test_extend_continues_exactly_like_one_longer_run(engine):
    long, _ = run(engine, "The best way to learn is", dataclasses.replace(GREEDY, length=16))
    short, _ = run(engine, "The best way to learn is", GREEDY)
    engine.extend(short)
    finish_step(engine, short)
    assert short.options[0].tokens == long.options[0].tokens
    assert short.texts() == long.texts()


def test_extend_after_the_cache_was_dropped_reads_it_again(engine):
    long, _ = run(engine, "The best way to learn is", dataclasses.replace(GREEDY, n=2, length=16))
    short, _ = run(engine, "The best way to learn is", dataclasses.replace(GREEDY, n=2))
    engine.release(short)
    assert short.cache is None
    engine.extend(short)
    finish_step(engine, short)
    assert short.texts() == long.texts()


def test_ragged_options_extend_like_separate_greedy_runs(engine):
    # sampled options stop at different lengths; the finished ones ride along as masked holes
    sampled = SamplingSettings(n=4, temperature=1.0, top_k=0, top_p=1.0, length=12, stop_at="sentence", seed=3)
    generation, _ = run(engine, "My favourite animal is the", sampled)
    lengths_before = [len(o.tokens) for o in generation.options]
    assert len(set(lengths_before)) > 1, "the seed should give options of different lengths"
    engine.extend(generation, {"temperature": 0, "stop_at": "length", "length": 6})
    finish_step(engine, generation)
    for option, before in zip(generation.options, lengths_before):
        context = torch.tensor([generation.prompt_ids + option.tokens[:before]])
        expected = engine.model.generate(context, max_new_tokens=6, do_sample=False,
                                         attention_mask=torch.ones_like(context))
        assert option.tokens[before:] == expected[0, context.shape[1]:].tolist()


def test_deltas_add_up_to_the_options(engine):
    generation, deltas = run(engine, "Dear diary,", SamplingSettings(n=3, seed=5, length=10))
    tails = engine.flush(generation)
    joined = ["".join(step[i] for step in deltas) + tails[i] for i in range(3)]
    assert joined == generation.texts()


def test_seed_repeats_exactly_and_different_seeds_differ(engine):
    settings = SamplingSettings(n=3, temperature=1.0, length=10, stop_at="length", seed=11)
    first, _ = run(engine, "In the morning I", settings)
    again, _ = run(engine, "In the morning I", settings)
    other, _ = run(engine, "In the morning I", dataclasses.replace(settings, seed=12))
    assert first.texts() == again.texts()
    assert first.texts() != other.texts()


def test_mid_word_prompt_continues_the_word(engine):
    generation, _ = run(engine, "The weather is beaut", dataclasses.replace(GREEDY, n=1))
    assert generation.healed == " beaut"
    assert generation.texts()[0].startswith("iful")


def test_trailing_space_is_never_doubled(engine):
    settings = SamplingSettings(n=5, temperature=1.0, length=6, seed=2)
    generation, _ = run(engine, "The weather is ", settings)
    assert generation.healed == " "
    for text in generation.texts():
        assert text and not text.startswith(" "), text


@pytest.mark.parametrize("text", ["日本の首都は", "Our party was great 🎉"])
def test_streams_never_carry_half_a_character(engine, text):
    generation, deltas = run(engine, text, SamplingSettings(n=3, temperature=1.0, length=16, seed=4))
    assert all("\ufffd" not in delta for step in deltas for delta in step)
    assert all("\ufffd" not in option for option in generation.texts())


def test_long_prompt_keeps_the_most_recent_tokens(engine):
    words = " ".join(f"word{i}" for i in range(3000))
    generation, _ = run(engine, words, dataclasses.replace(GREEDY, length=4))
    ids = engine.tokenizer(words, add_special_tokens=False)["input_ids"]
    budget = engine.loaded.max_context - 4 * 8
    assert generation.truncated == len(ids) - budget
    assert len(generation.prompt_ids) == budget - 1  # one token handed back for healing
    assert generation.prompt_ids == ids[-budget:-1]


def test_options_stop_at_the_context_window(engine, tiny):
    small = Engine(dataclasses.replace(tiny, max_context=40))
    generation, _ = small.start("x " * 100, SamplingSettings(n=2, temperature=0, length=64, stop_at="length"))
    while not generation.finished:
        small.step(generation)
    assert generation.finishes() == ["context", "context"]
    assert int(generation.positions.max()) < 40


def test_empty_text_starts_from_the_beginning_of_a_document(engine):
    generation, _ = run(engine, "", dataclasses.replace(GREEDY, length=4))
    assert generation.prompt_ids == [engine.start_id]
    assert generation.options[0].tokens


def test_cancel_stops_where_it_is_and_extend_resumes(engine):
    generation, _ = engine.start("Tell me a story about", dataclasses.replace(GREEDY, length=20))
    engine.step(generation)
    engine.cancel(generation)
    assert generation.finishes() == ["cancelled"]
    written = len(generation.options[0].tokens)
    engine.extend(generation, {"length": 3})
    finish_step(engine, generation)
    assert len(generation.options[0].tokens) == written + 3


def test_the_time_budget_counts_writing_not_reading(engine):
    # a budget far shorter than reading this prompt still leaves every option its first token
    words = " ".join(f"word{i}" for i in range(600))
    settings = SamplingSettings(n=2, temperature=0, length=64, stop_at="length", max_time=0.1)
    generation, _ = engine.start(words, settings)  # reading ~500 tokens takes several times 0.1 s
    assert generation.finishes() == [None, None]
    while not generation.finished:
        engine.step(generation)
    assert generation.finishes() == ["time", "time"]
    assert all(len(option.tokens) < 64 for option in generation.options)


def run_with(engine, text, settings, prefix):
    """Like `run`, reusing `prefix`; returns the options' tokens and the generation (with its new Prefix)."""
    generation, _ = engine.start(text, settings, prefix)
    finish_step(engine, generation)
    return [o.tokens for o in generation.options], generation


@pytest.mark.parametrize("before, after, reused_at_least", [
    ("The history of the old town begins", "The history of the old town begins with a bridge", 6),  # typed on
    ("The history of the old town begins", "The history of the old town begins", -1),  # same text: all but one
    ("The history of the old town begins", "The history of the new town begins", 4),  # an edit in the middle
    ("Dear diary,", "A different document altogether", 0),
])
def test_a_growing_document_reads_only_what_is_new_and_writes_the_same(engine, before, after, reused_at_least):
    settings = dataclasses.replace(GREEDY, n=2)
    _, first = run_with(engine, before, settings, None)
    reused_tokens, second = run_with(engine, after, settings, first.prefix)
    fresh_tokens, fresh = run_with(engine, after, settings, None)
    assert reused_tokens == fresh_tokens, "reusing the cache must not change a single token"
    if reused_at_least == -1:
        reused_at_least = len(second.prompt_ids) - 1
    assert second.reused >= reused_at_least and fresh.reused == 0
    assert second.reused < len(second.prompt_ids), "the last prompt token is always read, for its logits"
    assert second.prefix.ids == read_ids(second)
    assert second.prefix.cache.get_seq_length() == len(read_ids(second))


def read_ids(generation):
    """What the model read of the text: the prompt, and the token healing handed back (read one position ahead)."""
    return generation.prompt_ids + ([generation.healed_id] if generation.healed_id is not None else [])


def test_the_kept_prefix_is_not_changed_by_writing_the_options(engine):
    _, generation = run_with(engine, "Once upon a time", dataclasses.replace(GREEDY, n=3), None)
    assert generation.prefix.cache.layers[0].keys.shape[0] == 1, "the options' copies are separate"
    assert generation.prefix.cache.get_seq_length() == len(read_ids(generation))


def test_priming_in_chunks_then_tab_reads_only_the_last_token(engine):
    text = "The harbour was quiet that morning. " * 6
    settings = dataclasses.replace(GREEDY, n=2)
    prefix, complete = engine.prime(text, settings, None, chunk=16)
    assert not complete and len(prefix.ids) == 16
    while not complete:
        prefix, complete = engine.prime(text, settings, prefix, chunk=16)
    tokens, primed = run_with(engine, text, settings, prefix)
    fresh_tokens, _ = run_with(engine, text, settings, None)
    assert primed.reused == len(primed.prompt_ids) - 1, "TAB read only the prompt's last token"
    assert tokens == fresh_tokens


def test_priming_a_one_token_text_has_nothing_to_read(engine):
    prefix, complete = engine.prime("Hi", GREEDY, None)
    assert complete and prefix is None


def test_several_clients_batched_in_one_pass_write_what_each_writes_alone(engine):
    texts = ["The weather today is", "My favourite recipe for a cold winter evening needs",
             "In 1969 the first people walked on the", "Dear diary,"]
    settings = [dataclasses.replace(GREEDY, n=n, length=10) for n in (1, 3, 2, 2)]
    alone = [[o.tokens for o in run(engine, text, s)[0].options] for text, s in zip(texts, settings)]
    generations = [engine.start(text, s)[0] for text, s in zip(texts, settings)]
    for _ in range(12):  # also after some have finished: they ride along as masked rows
        engine.step_many(generations)
    assert [[o.tokens for o in g.options] for g in generations] == alone
    assert all(g.finished for g in generations)


def test_a_batched_set_extends_like_one_longer_run(engine):
    first, second = engine.start("Once upon a time", GREEDY)[0], engine.start("The committee decided", GREEDY)[0]
    while not (first.finished and second.finished):
        engine.step_many([first, second])
    engine.extend(first)
    finish_step(engine, first)
    longer = dataclasses.replace(GREEDY, length=16)
    assert [o.tokens for o in first.options] == [o.tokens for o in run(engine, "Once upon a time", longer)[0].options]


def owns_its_memory(cache):
    return all(t.is_contiguous() and t.untyped_storage().nbytes() == t.numel() * t.element_size()
               for layer in cache.layers for t in (layer.keys, layer.values))


def test_a_generation_that_leaves_a_batch_owns_its_cache(engine):
    going_on = engine.start("The weather today is", GREEDY)[0]
    ending = engine.start("A longer prompt about the history of the old town and its bridges",
                          dataclasses.replace(GREEDY, length=2))[0]
    engine.step_many([going_on, ending])
    assert ending.finished and owns_its_memory(ending.cache), "a finished set is kept alone, not inside the batch"
    assert not owns_its_memory(going_on.cache), "one that goes on keeps views until the next step"
    engine.cancel(going_on)
    assert owns_its_memory(going_on.cache)
    assert going_on.cache.get_seq_length() == going_on.mask.shape[1]


def test_perplexity_is_exp_of_the_mean_negative_log_likelihood(engine, embedded):
    text = "The cat sat on the mat. It was a sunny day, and the children played outside."
    scores = engine.score(text)[0]
    ids = embedded.tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():  # directly: each token given all the ones before it, after start-of-text
        inputs = torch.tensor([[engine.start_id] + ids])
        logprobs = torch.log_softmax(embedded.model(input_ids=inputs).logits[0, :-1].float(), dim=-1)
        nll = -logprobs[torch.arange(len(ids)), torch.tensor(ids)]
    assert scores["perplexity"] == pytest.approx(float(torch.exp(nll.mean())), rel=1e-4)
    assert [t["logprob"] for t in scores["tokens"]] == pytest.approx((-nll).tolist(), abs=1e-4)
    assert "".join(t["text"] for t in scores["tokens"]) == text
    surprising = engine.score("The cat sat on the mat. Purple algebra swims loudly beneath Tuesday.")[0]["perplexity"]
    assert surprising > scores["perplexity"], "nonsense surprises the model more"


def test_scoring_keeps_the_last_context_window(engine, tiny):
    small = Engine(tiny)  # a 256-token window
    total = len(tiny.tokenizer("word " * 400, add_special_tokens=False)["input_ids"])
    scores = small.score("word " * 400)[0]
    assert len(scores["tokens"]) == 255 and scores["truncated_tokens"] == total - 255
    assert engine.score("")[0]["perplexity"] is None


def utf16_slice(text, start, end):
    """`text[start:end]` with positions in UTF-16 code units, as the page counts them."""
    return text.encode("utf-16-le")[2 * start:2 * end].decode("utf-16-le")


def test_scored_tokens_carry_rank_alternatives_and_where_they_end(engine, embedded):
    text = "My 🙂 cat sat on the mat.\n\nThe  end"
    scores = engine.score(text)[0]
    tokens = scores["tokens"]
    assert scores["scored_from"] == 0 and tokens[-1]["end"] == len(text.encode("utf-16-le")) // 2
    starts = [0] + [t["end"] for t in tokens[:-1]]
    assert "".join(utf16_slice(text, a, t["end"]) for a, t in zip(starts, tokens)) == text
    assert utf16_slice(text, starts[1], tokens[1]["end"]) == " 🙂", "the page's slices follow the tokens"
    for token in tokens:
        top = token["top"]
        assert len(top) == 5 and [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert (token["rank"] == 1) == (token["text"] == top[0]["text"])
        assert token["rank"] >= 1 and token["logprob"] <= top[0]["logprob"] + 1e-4
    with torch.inference_mode():  # the rank directly: tokens the model found likelier, plus one
        ids = embedded.tokenizer(text, add_special_tokens=False)["input_ids"]
        logits = embedded.model(input_ids=torch.tensor([[engine.start_id] + ids])).logits[0, :-1].float()
        direct = [int((row > row[token]).sum()) + 1 for row, token in zip(logits, ids)]
    assert [t["rank"] for t in tokens] == direct


def test_scoring_a_long_text_says_where_the_scored_part_starts(engine, tiny):
    small = Engine(tiny)
    text = "word " * 400
    scores = small.score(text)[0]
    # "word", then " word" again and again: the scored part starts after the last dropped one
    assert scores["scored_from"] == 4 + 5 * (scores["truncated_tokens"] - 1)
    assert scores["tokens"][-1]["end"] == len(text)


def test_each_option_reports_the_models_likelihood_of_its_tokens(engine, embedded):
    generation, _ = run(engine, "Once", dataclasses.replace(GREEDY, length=6))
    option = generation.options[0]
    with torch.inference_mode():
        ids = generation.prompt_ids + option.tokens
        logprobs = torch.log_softmax(embedded.model(input_ids=torch.tensor([ids])).logits[0, :-1].float(), dim=-1)
        direct = logprobs[torch.arange(len(ids) - 1), torch.tensor(ids[1:])][-len(option.tokens):].mean()
    [likelihood] = generation.likelihoods()
    assert likelihood["logprob"] == pytest.approx(float(direct), abs=1e-4)
    assert likelihood["perplexity"] == pytest.approx(float(torch.exp(-direct)), rel=1e-3)


def test_greedy_mode_ignores_temperature_and_equals_generate(engine):
    hot = SamplingSettings(n=1, mode="greedy", temperature=1.5, top_k=0, top_p=1.0, length=8, stop_at="length")
    greedy, _ = run(engine, "Once", hot)
    plain, _ = run(engine, "Once", GREEDY)
    assert greedy.options[0].tokens == plain.options[0].tokens


def test_no_repeat_ngram_equals_generate_with_the_same_size(engine):
    settings = dataclasses.replace(GREEDY, length=24, no_repeat_ngram=1)
    generation, _ = run(engine, "Once", settings)
    prompt = torch.tensor([generation.prompt_ids])
    expected = engine.model.generate(prompt, max_new_tokens=24, do_sample=False, no_repeat_ngram_size=1,
                                     attention_mask=torch.ones_like(prompt))
    assert generation.options[0].tokens == expected[0, 1:].tolist()
    unbanned, _ = run(engine, "Once", dataclasses.replace(GREEDY, length=24))
    assert unbanned.options[0].tokens != generation.options[0].tokens, "the ban changed something"


@pytest.mark.parametrize("beams, n, no_repeat", [(4, 3, 0), (3, 1, 3)])
def test_beam_search_equals_generate_with_the_same_beams(engine, beams, n, no_repeat):
    settings = SamplingSettings(n=n, mode="beam", beams=beams, length=10, no_repeat_ngram=no_repeat,
                                max_time=30)  # the whole search, as generate runs it, even on a busy machine
    text = "The capital of France is"
    generation, deltas = engine.start(text, settings)
    assert generation.finished and generation.healed == "" and deltas == generation.texts()
    prompt = torch.tensor([generation.prompt_ids])
    from webapp.generation.beams import beam_arguments

    expected = engine.model.generate(prompt, attention_mask=torch.ones_like(prompt), pad_token_id=engine.pad_id,
                                     **beam_arguments(settings, n, 10))
    for option, row in zip(generation.options, expected[:, prompt.shape[1]:].tolist()):
        assert option.tokens == row[:len(option.tokens)]
        assert all(token == engine.pad_id for token in row[len(option.tokens):])
    assert len(set(generation.texts())) == n, "the n best beams differ"
    likelihoods = [likelihood["logprob"] for likelihood in generation.likelihoods()]
    assert all(value < 0 for value in likelihoods)


def test_beam_search_extends_every_option_by_another_search(engine):
    settings = SamplingSettings(n=2, mode="beam", beams=3, length=6, max_time=30)
    generation, _ = engine.start("The weather today is", settings)
    before = generation.texts()
    engine.extend(generation)
    [deltas] = engine.step_many([generation])
    assert generation.finished
    assert [b + d for b, d in zip(before, deltas)] == generation.texts()
    assert all(option.step_tokens > 0 for option in generation.options)


def test_beam_and_sampled_generations_step_together(engine):
    beam = engine.start("Hello", SamplingSettings(n=1, mode="beam", beams=2, length=4))[0]
    sampled, _ = engine.start("Hello", dataclasses.replace(GREEDY, length=4))
    alone, _ = run(engine, "Hello", dataclasses.replace(GREEDY, length=4))
    engine.extend(beam)
    while not (beam.finished and sampled.finished):
        engine.step_many([g for g in (beam, sampled) if not g.finished])
    assert sampled.texts() == alone.texts() and beam.finished


def test_next_token_distribution_is_the_models_and_reuses_the_prefix(engine, embedded):
    text = "The capital of France is"
    logits, prefix = engine.next_token_logits(text)
    with torch.inference_mode():
        ids = embedded.tokenizer(text, add_special_tokens=False)["input_ids"]
        direct = embedded.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
    assert torch.allclose(logits, direct, atol=1e-4)
    longer, _ = engine.next_token_logits(text + " Paris", prefix)
    with torch.inference_mode():
        ids = embedded.tokenizer(text + " Paris", add_special_tokens=False)["input_ids"]
        direct = embedded.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
    assert torch.allclose(longer, direct, atol=1e-4)

    model = engine.distribution(logits, SamplingSettings(temperature=1.0, top_k=0, top_p=1.0))
    probs = torch.softmax(logits, dim=-1)
    assert model["tokens"][0]["prob"] == pytest.approx(float(probs.max()), abs=1e-5)
    assert all(t["prob"] == pytest.approx(t["shaped"], abs=1e-5) for t in model["tokens"]), "nothing reshaped"
    assert model["candidates"] == model["vocabulary"] == logits.shape[-1]
    narrow = engine.distribution(logits, SamplingSettings(temperature=1.0, top_k=3, top_p=1.0))
    assert narrow["candidates"] == 3 and sum(t["shaped"] for t in narrow["tokens"][:3]) == pytest.approx(1, abs=1e-5)
    assert all(t["shaped"] == 0 and not t["kept"] for t in narrow["tokens"][3:])
    assert all(t["kept"] for t in narrow["tokens"][:3])
    greedy = engine.distribution(logits, SamplingSettings(mode="greedy"))
    assert greedy["candidates"] == 1 and greedy["tokens"][0]["shaped"] == 1.0


def test_decoding_steps_write_into_the_caches_spare_room(engine):
    generation, _ = engine.start("The weather today is", dataclasses.replace(GREEDY, n=2, length=6))
    engine.step(generation)  # the first step writes the options' first tokens into buffers with room to spare
    layer = generation.cache.layers[0]
    buffer = layer.buffers[0]
    length = layer.keys.shape[-2]
    engine.step(generation)
    assert layer.buffers[0] is buffer and layer.keys.data_ptr() == buffer.data_ptr(), "written in place"
    assert layer.keys.shape[-2] == length + 2 and buffer.shape[-2] > length + 2, "a column per option"
    reference, _ = run(engine, "The weather today is", dataclasses.replace(GREEDY, n=2, length=6))
    finish_step(engine, generation)
    assert generation.texts() == reference.texts()


def test_requests_join_and_leave_the_stack_in_place_and_each_writes_what_it_writes_alone(engine):
    texts = ["The weather today is", "In 1969 the first people walked on the", "Dear diary,",
             "My favourite recipe for a cold winter evening needs"]
    lengths = (10, 3, 10, 8)
    settings = [dataclasses.replace(GREEDY, n=n, length=length) for n, length in zip((2, 2, 3, 1), lengths)]
    alone = [[o.tokens for o in run(engine, text, s)[0].options] for text, s in zip(texts, settings)]
    first, short, late, longest = (engine.start(text, s)[0] for text, s in zip(texts, settings))
    engine.step_many([first, short])
    buffer = engine._stack.keys[0]
    engine.step_many([first, short])
    engine.step_many([first, short, late])  # someone new joins: copied in after the others, nobody else moves
    assert engine._stack.keys[0] is buffer, "no new memory: the newcomer took spare rows"
    assert short.finished and owns_its_memory(short.cache)
    engine.step_many([first, late, longest])  # one left from the middle, a longer prompt joins: a bigger stack
    assert engine._stack.holders == [first, late, longest]
    while not all(g.finished for g in (first, late, longest)):
        engine.step_many([g for g in (first, late, longest) if not g.finished])
    assert [[o.tokens for o in g.options] for g in (first, short, late, longest)] == alone
    assert engine._stack is None, "everyone finished: the stack's memory is let go"


def test_a_leaver_from_the_middle_moves_the_rows_after_it_up(engine):
    texts = ["Once upon a time", "The committee decided", "Dear diary,"]
    settings = [dataclasses.replace(GREEDY, n=n, length=length) for n, length in ((1, 9), (3, 2), (2, 9))]
    alone = [[o.tokens for o in run(engine, text, s)[0].options] for text, s in zip(texts, settings)]
    generations = [engine.start(text, s)[0] for text, s in zip(texts, settings)]
    engine.step_many(generations)
    engine.step_many(generations)  # the middle one (three options, one row) ends here
    buffer = engine._stack.keys[0]
    going_on = [generations[0], generations[2]]
    engine.step_many(going_on)
    assert engine._stack.keys[0] is buffer and engine._stack.rows_of(generations[2]) == slice(1, 2)
    while not all(g.finished for g in going_on):
        engine.step_many([g for g in going_on if not g.finished])
    assert [[o.tokens for o in g.options] for g in generations] == alone


def test_a_cancelled_member_keeps_its_own_copy_while_others_write_on(engine):
    settings = dataclasses.replace(GREEDY, n=2, length=12)
    stopped, going_on = engine.start("The weather today is", settings)[0], engine.start("Dear diary,", settings)[0]
    engine.step_many([stopped, going_on])
    engine.cancel(stopped)
    kept = [layer.keys.clone() for layer in stopped.cache.layers]
    newcomer = engine.start("In 1969 the first people walked on the", settings)[0]
    for _ in range(3):  # the newcomer takes rows and columns; the cancelled set's copy must not change
        engine.step_many([going_on, newcomer])
    assert all(torch.equal(layer.keys, before) for layer, before in zip(stopped.cache.layers, kept))
    engine.extend(stopped)
    finish_step(engine, stopped)
    whole = dataclasses.replace(settings, length=len(stopped.options[0].tokens))
    assert [o.tokens for o in stopped.options] == [o.tokens for o in run(engine, "The weather today is",
                                                                           whole)[0].options]


def test_scoring_a_longer_text_reads_only_its_new_tokens_and_scores_the_same(engine):
    text = "The cat sat on the mat. It was a sunny day, and the children played outside."
    first, scored = engine.score(text)
    read = []
    forward = engine.model.forward
    engine.model.forward = lambda *args, **kwargs: read.append(kwargs["input_ids"].shape[1]) or forward(*args, **kwargs)
    try:
        longer, scored = engine.score(text + " Then it rained.", scored)
        edited, _ = engine.score("The dog sat on the mat.", scored)  # differs at the second token
        same, _ = engine.score("The dog sat on the mat.", engine.score("The dog sat on the mat.")[1])
    finally:
        del engine.model.forward
    fresh = engine.score(text + " Then it rained.")[0]
    assert read[0] == len(longer["tokens"]) - len(first["tokens"]), "only the new tokens were read"
    assert read[1] == len(edited["tokens"]) - 1, "after an edit, from the first changed token on"
    assert longer["perplexity"] == pytest.approx(fresh["perplexity"], rel=1e-4)
    assert [t["rank"] for t in longer["tokens"]] == [t["rank"] for t in fresh["tokens"]]
    assert [t["logprob"] for t in longer["tokens"]] == pytest.approx([t["logprob"] for t in fresh["tokens"]], abs=1e-4)
    assert same == engine.score("The dog sat on the mat.")[0], "the same text again: nothing to read"


def test_scoring_after_the_end_was_deleted_reuses_what_is_left(engine):
    text = "The cat sat on the mat. It was a sunny day."
    _, scored = engine.score(text)
    shorter, kept = engine.score("The cat sat on the mat.", scored)  # every token left was scored before
    fresh = engine.score("The cat sat on the mat.")[0]
    assert shorter["perplexity"] == pytest.approx(fresh["perplexity"], rel=1e-4)
    assert [t["rank"] for t in shorter["tokens"]] == [t["rank"] for t in fresh["tokens"]]
    longer, _ = engine.score(text, kept)  # and it goes on from the cut-back cache
    assert longer["perplexity"] == pytest.approx(engine.score(text)[0]["perplexity"], rel=1e-4)


def test_when_the_stacks_columns_run_out_the_ones_in_use_move_to_its_front(engine, monkeypatch):
    monkeypatch.setattr(kvcache, "SPARE_POSITIONS", 16)
    texts = ["My favourite recipe for a cold winter evening needs a few things from the market", "Dear diary,"]
    settings = [dataclasses.replace(GREEDY, n=1, length=4), dataclasses.replace(GREEDY, n=2, length=30)]
    alone = [[o.tokens for o in run(engine, text, s)[0].options] for text, s in zip(texts, settings)]
    engine._spare = None  # a stack made for these two (not an earlier test's, with room to spare)
    long_one, short_one = (engine.start(text, s)[0] for text, s in zip(texts, settings))
    engine.step_many([long_one, short_one])
    buffer, moved = engine._stack.keys[0], False
    while not short_one.finished:  # the long prompt has left: the free columns before the short one are reused
        engine.step_many([g for g in (long_one, short_one) if not g.finished])
        stack = engine._stack
        moved = moved or (stack is not None and stack.keys[0] is buffer and stack.begin == 0
                          and len(stack.members) == 1)
    assert moved, "in place, in the same memory"
    assert engine._stack is None
    assert [[o.tokens for o in g.options] for g in (long_one, short_one)] == alone


def test_a_healed_token_re_spelled_as_it_was_is_read_ahead_and_words_come_at_once(engine):
    generation, deltas = engine.start("Once upon a time there was a", dataclasses.replace(GREEDY, n=2))
    assert generation.healed == " a"
    assert all(o.tokens[0] == generation.healed_id and len(o.tokens) == 2 for o in generation.options)
    assert all(delta.strip() for delta in deltas), "visible words from the prompt's own pass"
    assert generation.cache.get_seq_length() == len(generation.prompt_ids) + 1, "the read-ahead token is kept"
    assert generation.mask.all() and generation.mask.shape == (2, len(generation.prompt_ids) + 1)
    finish_step(engine, generation)
    prompt = torch.tensor([generation.prompt_ids + generation.options[0].tokens[:1]])
    expected = engine.model.generate(prompt, max_new_tokens=7, do_sample=False, attention_mask=torch.ones_like(prompt))
    assert generation.options[0].tokens[1:] == expected[0, prompt.shape[1]:].tolist()


def test_a_healed_token_spelled_differently_replaces_the_read_ahead_one(engine):
    generation, deltas = engine.start("I love to play foot", GREEDY)
    first = generation.options[0].tokens[0]
    assert generation.healed == " foot" and first != generation.healed_id and deltas == ["ball"], "a longer word"
    assert generation.cache.get_seq_length() == len(generation.prompt_ids), "the read-ahead position is gone"
    assert generation.mask.shape[1] == len(generation.prompt_ids)
    finish_step(engine, generation)
    prompt = torch.tensor([generation.prompt_ids + [first]])
    expected = engine.model.generate(prompt, max_new_tokens=7, do_sample=False, attention_mask=torch.ones_like(prompt))
    assert generation.options[0].tokens[1:] == expected[0, prompt.shape[1]:].tolist()


def test_prompts_read_together_write_what_each_writes_alone_and_keep_the_same_caches(engine):
    earlier = "The history of the old town begins"
    texts = [earlier + " with a bridge over the river", "I love to play foot", "Once", "Dear diary, today I",
             "The weather today is"]
    settings = [dataclasses.replace(GREEDY, n=n, length=6) for n in (2, 1, 1, 3, 2)]
    beam = ("Hello there", SamplingSettings(n=1, mode="beam", beams=2, length=4), None)

    def requests():  # the first reuses its tab's earlier prompt; the others read from scratch
        prefix = engine.start(earlier, GREEDY)[0].prefix
        return [(texts[0], settings[0], prefix)] + [(t, s, None) for t, s in zip(texts[1:], settings[1:])] + [beam]

    alone = [engine.start(*request) for request in requests()]
    together = engine.start_many([(engine.prepare(text, settings), prefix) for text, settings, prefix in requests()])
    assert [g.reused for g, _ in together] == [g.reused for g, _ in alone] and together[0][0].reused > 0
    assert [deltas for _, deltas in together] == [deltas for _, deltas in alone]
    for (mine, _), (reference, _) in zip(together[:-1], alone[:-1]):
        assert mine.prefix.ids == reference.prefix.ids
        assert mine.cache.get_seq_length() == reference.cache.get_seq_length() == mine.mask.shape[1]
        for layer, expected in zip(mine.prefix.cache.layers, reference.prefix.cache.layers):
            assert torch.allclose(layer.keys, expected.keys, atol=1e-4)
            assert torch.allclose(layer.values, expected.values, atol=1e-4)
    generations = [g for g, _ in together]
    while not all(g.finished for g in generations):
        engine.step_many([g for g in generations if not g.finished])
    for g, _ in alone:
        finish_step(engine, g)
    assert [g.texts() for g in generations] == [g.texts() for g, _ in alone]


def test_the_output_layer_gets_a_dense_input_when_prompts_are_read_together(engine):
    # each prompt's last two positions are a strided slice of the batch; bfloat16 F.linear on one
    # copies the whole output weight once per prompt, so the engine lays the input out first
    seen = []
    spy = engine.model.get_output_embeddings().register_forward_pre_hook(
        lambda module, args: seen.append((tuple(args[0].shape), args[0].is_contiguous())))
    try:
        engine.start_many([(engine.prepare("The history of the old town begins with a bridge", GREEDY), None),
                           (engine.prepare("Dear diary, today I went to the", GREEDY), None)])
    finally:
        spy.remove()
    assert seen == [((2, 2, engine.model.config.hidden_size), True)]


def test_unread_counts_what_a_start_would_read(engine):
    text = "The history of the old town begins with a bridge"
    assert engine.unread(engine.prepare(text, GREEDY)) == len(engine.start(text, GREEDY)[0].prefix.ids)
    prefix = engine.start(text, GREEDY)[0].prefix
    longer = text + " over the river"
    counted = engine.unread(engine.prepare(longer, GREEDY), prefix)
    generation = engine.start(longer, GREEDY, prefix)[0]
    assert generation.reused > 0 and counted == len(generation.prefix.ids) - generation.reused


def test_options_that_spell_the_healed_token_differently_hide_the_read_ahead_position(engine, embedded):
    text = "I love to play foot"
    for seed in range(60):  # a seed whose options split: some re-spell " foot", some write a longer word
        settings = SamplingSettings(n=4, temperature=1.5, top_k=0, top_p=1.0, length=6, stop_at="length", seed=seed)
        generation, _ = engine.start(text, settings)
        kept = [o.tokens[0] == generation.healed_id for o in generation.options]
        if any(kept) and not all(kept):
            break
    else:
        pytest.fail("no seed split the options")
    assert [len(o.tokens) for o in generation.options] == [2 if k else 1 for k in kept], "kept ones wrote on at once"
    finish_step(engine, generation)
    # every option's visible cache positions hold exactly the keys and values of its own text
    for row, option in enumerate(generation.options):
        ids = generation.prompt_ids + option.tokens[:-1]
        with torch.inference_mode():
            direct = embedded.model(input_ids=torch.tensor([ids]), use_cache=True).cache
        for (keys, values), expected in zip(seen_by(generation, row), direct.layers):
            assert keys.shape == expected.keys[0].shape
            assert torch.allclose(keys, expected.keys[0], atol=1e-4)
            assert torch.allclose(values, expected.values[0], atol=1e-4)


def seen_by(generation, row):
    """Per layer: the keys and values option `row` attends to (the prompt's positions it sees, then its own)."""
    seen = generation.mask[row].nonzero()[:, 0]
    return [(layer.keys[0][:, seen], layer.values[0][:, seen]) for layer in generation.cache.layers]


def test_a_batch_holds_each_request_in_one_row_its_prompt_once_then_a_column_per_option(engine):
    texts = ["The history of the old town begins with a bridge over the river", "Dear diary, today I went to the"]
    generations = [engine.start(text, dataclasses.replace(GREEDY, n=3))[0] for text in texts]
    prompts = [g.cache.get_seq_length() for g in generations]
    for steps in range(1, 4):
        engine.step_many(generations)
        assert engine._stack.used_rows == len(texts), "one row per request, not per option"
        assert engine._stack.width == max(prompts) + 3 * steps, "the prompt once, then a column per option a step"
        assert all(g.cache.get_seq_length() == prompt + 3 * steps for g, prompt in zip(generations, prompts))
    alone = [run(engine, text, dataclasses.replace(GREEDY, n=3, length=4))[0] for text in texts]
    assert [[o.tokens[:4] for o in g.options] for g in generations] == [[o.tokens for o in g.options] for g in alone]


def test_the_next_tab_on_an_edited_prompt_does_not_write_over_what_the_last_options_read(engine):
    text = "The history of the old town begins with a bridge over the"
    settings = dataclasses.replace(GREEDY, n=2, length=4)
    earlier = engine.start(text[:-len(" bridge over the")], settings)[0].prefix
    _, shown = run_with(engine, text, settings, earlier)  # its prompt cache now grows in buffers of its own
    assert shown.reused > 0
    seen = [keys.clone() for keys, _ in seen_by(shown, 0)]
    # the writer changes the last word and presses Tab again: the client's prompt cache is cut back and written on
    _, edited = run_with(engine, text[:-len(" the")] + " a", settings, shown.prefix)
    assert edited.reused > 0
    assert all(torch.equal(keys, before) for (keys, _), before in zip(seen_by(shown, 0), seen))
    engine.extend(shown, {"length": 8})  # Tab again on the first options: they go on from what they read
    finish_step(engine, shown)
    reference, _ = run(engine, text, dataclasses.replace(GREEDY, n=2, length=12))
    assert shown.texts() == reference.texts()



@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_a_model_whose_attention_ignores_the_interface_stops_with_a_clear_error(embedded, which):
    import copy

    from conftest import build_tiny_gpt2

    from webapp.models.loading import wrap_model

    model = build_tiny_gpt2(embedded.tokenizer) if which == "gpt2" else copy.deepcopy(embedded.model)
    loaded = wrap_model(model, embedded.tokenizer, which)
    engine = Engine(loaded)
    engine.warm_up()  # through the interface: fine
    # eager attention would broadcast the options' queries over their request's row: GPT-2's trips over the
    # shapes, Llama's writes nonsense without a word; either way the engine says what is wrong
    model.config._attn_implementation = "eager"
    with pytest.raises(RuntimeError, match="AttentionInterface"):
        engine.warm_up()  # what the server runs before it says it is ready


def test_a_batched_step_samples_each_generation_as_it_would_alone(engine):
    """`sample_many` (like settings' rows together) and `sample` one generation at a time choose the same."""
    sampled = SamplingSettings(n=3, length=30, stop_at="length", seed=1)
    kinds = [sampled, dataclasses.replace(GREEDY, n=2, length=30), dataclasses.replace(sampled, seed=2),
             dataclasses.replace(sampled, temperature=1.3, top_k=0, top_p=0.9, seed=3),
             dataclasses.replace(sampled, n=1, no_repeat_ngram=2, seed=4), dataclasses.replace(sampled, seed=5)]
    texts = [f"Story {index}: the" for index in range(len(kinds))]
    together, alone = ([engine.start(text, settings)[0] for text, settings in zip(texts, kinds)] for _ in range(2))
    rows = sum(settings.n for settings in kinds)
    torch.manual_seed(0)
    for _ in range(6):
        logits = torch.randn(rows, engine.model.config.vocab_size) * 4
        deltas = engine.chooser.sample_many(together, logits)
        apart = [engine.chooser.sample(generation, part) for generation, part in
                 zip(alone, logits.split([settings.n for settings in kinds]))]
        assert deltas == apart
    for mine, yours in zip(together, alone):
        assert [option.tokens for option in mine.options] == [option.tokens for option in yours.options]
        assert [option.logprob for option in mine.options] == [option.logprob for option in yours.options]
    # the seeded ones did draw: their options differ
    assert len({tuple(option.tokens) for option in together[0].options}) > 1


def test_the_next_class_writes_in_the_memory_of_the_last_ones_stack(engine):
    settings = dataclasses.replace(GREEDY, n=2, length=5)
    texts = ["The weather today is", "Dear diary,", "In 1969 the first people walked on the", "Once upon a time",
             "The committee decided"]
    alone = [[o.tokens for o in run(engine, text, settings)[0].options] for text in texts]
    first = [engine.start(text, settings)[0] for text in texts[:3]]
    while not all(g.finished for g in first):
        engine.step_many([g for g in first if not g.finished])
    spare = engine._spare
    assert engine._stack is None and spare is not None and all(owns_its_memory(g.cache) for g in first)
    second = [engine.start(text, settings)[0] for text in texts[3:]]
    engine.step_many(second, joining=1)
    assert engine._stack is spare and engine._spare is None, "no new memory: the last class's stack"
    while not all(g.finished for g in second):
        engine.step_many([g for g in second if not g.finished])
    assert [[o.tokens for o in g.options] for g in first + second] == alone


def test_a_stack_too_big_to_keep_is_let_go(engine, monkeypatch):
    monkeypatch.setattr("webapp.generation.engine.SPARE_STACK_BYTES", 0)
    settings = dataclasses.replace(GREEDY, n=2, length=3)
    generations = [engine.start(text, settings)[0] for text in ("Dear diary,", "Once upon a time")]
    while not all(g.finished for g in generations):
        engine.step_many(generations)
    assert engine._stack is None and engine._spare is None
