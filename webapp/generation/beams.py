"""Beam search: the n best sequences after a prompt, written a whole step at a time by transformers' `generate`.

Functions of an Engine (its model and window), which its methods call. A beam search cannot
be paused and resumed, so its cost is bounded instead: `generate` reads the prompt once per
beam, in one pass that no time limit can stop, so the prompt keeps only its most recent
tokens that fit the engine's pass_work (weights x tokens, as one pass of prompts read
together); and the search stops at its request's `max_time` or the engine's `beam_seconds`,
whichever comes first.
"""
import math
import time

import torch

MIN_PROMPT_TOKENS = 16  # however large the model, a beam search sees at least this much of its prompt


def write_beams(engine, generation):
    """Write one step by beam search: first the n best beams of the prompt, on extend one more search per option.

    Beam search keeps several candidates and may drop any of them at the next step, so its
    text cannot be streamed word by word; each step arrives whole.
    """
    settings = generation.settings
    deadline = time.monotonic() + min(settings.max_time, engine.beam_seconds)
    going = [option for option in generation.options if option.finish is None]
    if not any(option.tokens for option in generation.options):
        found = beam_search(engine, generation.prompt_ids, settings, len(going), deadline)
    else:  # one search per option: they share the step's time and its reading work, in equal parts
        found = []
        for done, option in enumerate(going):
            share = (deadline - time.monotonic()) / (len(going) - done)
            found.append(beam_search(engine, generation.prompt_ids + option.tokens, settings, 1,
                                     time.monotonic() + share, len(going))[0])
    for option, (tokens, logprobs) in zip(going, found):
        option.step_tokens, option.step_text = 0, ""
        for token, logprob in zip(tokens, logprobs):
            option.logprob += logprob
            option.tokens.append(token)
            option.step_tokens += 1
            if token not in engine.loaded.eos_ids:
                delta = option.detokenizer.push(token)
                option.text += delta
                option.step_text += delta
        ended = any(token in engine.loaded.eos_ids for token in tokens)
        full = len(generation.prompt_ids) + len(option.tokens) >= engine.loaded.max_context
        cut_short = len(tokens) < settings.length and time.monotonic() >= deadline
        option.finish = "eos" if ended else "context" if full else "time" if cut_short else "length"
    deltas = {id(option): option.step_text for option in going}
    return [deltas.get(id(option), "") for option in generation.options]

def beam_search(engine, ids, settings, count, deadline=math.inf, sharing=1):
    """The `count` best beams after `ids`: (new token ids up to and including an end of text, their log-probs).

    The search stops at `deadline` (time.monotonic()) with what it has; none is started after it. `sharing`
    searches share one pass's reading work.
    """
    room = engine.loaded.max_context - len(ids)
    left = deadline - time.monotonic()
    if room <= 0 or left <= 0:
        return [([], [])] * count
    ids = ids[-prompt_tokens(engine, settings.beams * sharing):]
    inputs = torch.tensor([ids], device=engine.device)
    arguments = beam_arguments(settings, count, min(settings.length, room), left)
    out = engine.model.generate(inputs, attention_mask=torch.ones_like(inputs), pad_token_id=engine.pad_id,
                              output_scores=True, return_dict_in_generate=True, **arguments)
    steps = engine.model.compute_transition_scores(out.sequences, out.scores, out.beam_indices,
                                                 normalize_logits=False)
    found = []
    for sequence, logprobs in zip(out.sequences[:, len(ids):].tolist(), steps.tolist()):
        end = next((i + 1 for i, token in enumerate(sequence) if token in engine.loaded.eos_ids), len(sequence))
        found.append((sequence[:end], logprobs[:end]))
    return found


def prompt_tokens(engine, beams):
    """How many of the prompt's most recent tokens a search of `beams` beams (all searches of a step) reads."""
    return max(MIN_PROMPT_TOKENS, int(engine.pass_work / max(1, engine.loaded.parameters) / beams))


def beam_arguments(settings, count, length, seconds=math.inf):
    """What `generate` is given for beam search with `settings`: the engine's beams are exactly generate's.

    `seconds` (finite) is passed as generate's `max_time`: it stops after the step that passes it.
    """
    arguments = {"num_beams": settings.beams, "num_return_sequences": count, "max_new_tokens": length,
                 "no_repeat_ngram_size": settings.no_repeat_ngram, "do_sample": False, "early_stopping": True}
    if math.isfinite(seconds):
        arguments["max_time"] = seconds
    return arguments
