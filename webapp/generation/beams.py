"""Beam search: the n best sequences after a prompt, written a whole step at a time by transformers' `generate`.

Functions of an Engine (its model and window), which its methods call.
"""
import torch


def write_beams(engine, generation):
    """Write one step by beam search: first the n best beams of the prompt, on extend one more search per option.

    Beam search keeps several candidates and may drop any of them at the next step, so its
    text cannot be streamed word by word; each step arrives whole.
    """
    settings = generation.settings
    going = [option for option in generation.options if option.finish is None]
    if not any(option.tokens for option in generation.options):
        found = beam_search(engine, generation.prompt_ids, settings, len(going))
    else:
        found = [beam_search(engine, generation.prompt_ids + option.tokens, settings, 1)[0] for option in going]
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
        option.finish = "eos" if ended else "context" if full else "length"
    deltas = {id(option): option.step_text for option in going}
    return [deltas.get(id(option), "") for option in generation.options]

def beam_search(engine, ids, settings, count):
    """The `count` best beams after `ids`: (new token ids up to and including an end of text, their log-probs)."""
    room = engine.loaded.max_context - len(ids)
    if room <= 0:
        return [([], [])] * count
    inputs = torch.tensor([ids], device=engine.device)
    arguments = beam_arguments(settings, count, min(settings.length, room))
    out = engine.model.generate(inputs, attention_mask=torch.ones_like(inputs), pad_token_id=engine.pad_id,
                              output_scores=True, return_dict_in_generate=True, **arguments)
    steps = engine.model.compute_transition_scores(out.sequences, out.scores, out.beam_indices,
                                                 normalize_logits=False)
    found = []
    for sequence, logprobs in zip(out.sequences[:, len(ids):].tolist(), steps.tolist()):
        end = next((i + 1 for i, token in enumerate(sequence) if token in engine.loaded.eos_ids), len(sequence))
        found.append((sequence[:end], logprobs[:end]))
    return found


def beam_arguments(settings, count, length):
    """What `generate` is given for beam search with `settings`: the engine's beams are exactly generate's."""
    return {"num_beams": settings.beams, "num_return_sequences": count, "max_new_tokens": length,
            "no_repeat_ngram_size": settings.no_repeat_ngram, "do_sample": False, "early_stopping": True}
