"""How likely the model finds a text, token by token (perplexity, the surprise view), and what it expects next.

Functions of an Engine (its model, vocabulary and prompt caches), which its methods call.
"""
import math
from dataclasses import dataclass

import torch

from . import kvcache
from .detokenizer import REPLACEMENT
from .sampling import reshape
from .state import HoldsCache, Prefix, common_length, keep_common_start

SCORE_ALTERNATIVES = 5  # the model's likeliest tokens shown for each scored position
DISTRIBUTION_TOP = 20  # next-token candidates sent for the distribution chart
LONGEST_RUN = 8  # tokens merged into one shown span at most (a UTF-8 character takes at most 4 byte tokens)


@dataclass
class Scored(HoldsCache):
    """A tab's last scored tokens, their results and the keys and values of the model's inputs for them."""

    ids: list
    results: list  # per token: (id, log-probability, rank, [(alternative id, log-probability), ...])
    cache: object


def score(engine, text, previous=None):
    """How likely the model finds `text` (its last context window), token by token, and its perplexity.

    Every token is predicted from the ones before it; the first from the start-of-text
    token. Each scored token carries its log-probability, its rank among all tokens the
    model could have put there (1 = the likeliest), the model's likeliest alternatives,
    and where it ends in `text` (in UTF-16 code units, as the page counts). Perplexity is
    exp of the mean negative log-likelihood over the scored tokens.

    Tokens that each hold part of a character (byte-level BPE splits Japanese and emoji)
    are shown as one entry for the whole character: its log-probability is theirs added
    up (the character's probability), its rank their largest, its alternatives those of
    its first token, and `parts` lists each token's own text, log-probability and rank.

    `previous` (the Scored of this tab's last score, used up) lets the tokens `text`
    still begins with keep their results and their keys and values, so that only the
    new tokens are read. Returns the scores and the new Scored (None for an empty text).
    """
    ids, ends = engine.vocab.ids_with_ends(text)
    truncated = max(0, len(ids) - (engine.loaded.max_context - 1))
    scored_from = ends[truncated - 1] if truncated else 0
    ids, ends = ids[truncated:], ends[truncated:]
    if not ids:
        return {"tokens": [], "perplexity": None, "truncated_tokens": truncated, "scored_from": scored_from}, None
    scored = _score_ids(engine, ids, previous)
    tokens = [_shown(engine.vocab, scored.results[start:stop], ends[stop - 1])
              for start, stop in whole_characters(engine.vocab, ids)]
    mean = sum(value for _, value, _, _ in scored.results) / len(scored.results)
    return {"tokens": tokens, "perplexity": math.exp(-mean), "truncated_tokens": truncated,
            "scored_from": scored_from}, scored

def whole_characters(vocab, ids):
    """`ids` cut into runs that hold whole characters, as (start, stop) pairs: most runs are one token."""
    runs, start = [], 0
    for stop in range(1, len(ids) + 1):
        # a token that is text by itself ends a run; one that holds part of a character may need the next ones
        split = REPLACEMENT in vocab.piece(ids[stop - 1]) and vocab.decode(ids[start:stop]).endswith(REPLACEMENT)
        if split and stop < len(ids) and stop - start < LONGEST_RUN:
            continue
        runs.append((start, stop))
        start = stop
    return runs


def _shown(vocab, results, end):
    """One entry of the surprise view: a token, or the tokens of a split character as one."""
    ids = [token for token, _, _, _ in results]
    _, _, _, top = results[0]
    shown = {"text": vocab.shown(ids), "logprob": round(sum(value for _, value, _, _ in results), 5),
             "rank": max(rank for _, _, rank, _ in results), "end": end,
             "top": [{"text": vocab.shown([other]), "logprob": round(value, 4)} for other, value in top]}
    if len(results) > 1:
        shown["parts"] = [{"text": vocab.shown([token]), "logprob": round(value, 5), "rank": rank}
                          for token, value, rank, _ in results]
    return shown


def _score_ids(engine, ids, previous):
    """Per token of `ids`: (id, log-probability, rank, top alternatives); reusing what `previous` scored."""
    if previous is not None and previous.ids == ids:
        return previous
    # the model's inputs are [start] + ids[:-1]: the cache holds one position per scored token
    cache, common = keep_common_start(previous.ids, previous.cache, ids) if previous else (None, 0)
    if common == len(ids):  # the text only lost its end: every token left is scored already
        return Scored(list(ids), previous.results[:common], cache)
    inputs = torch.tensor([([engine.start_id] + ids[:-1])[common:]], device=engine.device)
    out = engine.model(input_ids=inputs, cache=cache, use_cache=True)
    logprobs = torch.log_softmax(out.logits[0].float(), dim=-1)
    actual = logprobs.gather(1, torch.tensor(ids[common:], device=engine.device)[:, None])[:, 0]
    ranks = ((logprobs > actual[:, None]).sum(dim=1) + 1).tolist()
    top_values, top_ids = logprobs.topk(SCORE_ALTERNATIVES, dim=-1)
    fresh = [(token, value, rank, list(zip(others, other_values))) for token, value, rank, others, other_values
             in zip(ids[common:], actual.tolist(), ranks, top_ids.tolist(), top_values.tolist())]
    kept = previous.results[:common] if common else []
    return Scored(list(ids), kept + fresh, out.cache)

def score_ahead(engine, text, previous=None):
    """Part of scoring a long `text`: the Scored of its next pass's worth of unread tokens, or None when the rest
    fits one pass (then `score` reads it). Calling again with the returned Scored goes on where this one stopped;
    each call reads at most the engine's pass_work, so a long text never holds the model for long."""
    ids = engine.vocab.ids(text)[-(engine.loaded.max_context - 1):]
    common = common_length(previous.ids, ids) if previous else 0  # counted only: `previous` is not used up here
    most = max(1, int(engine.pass_work / max(1, engine.loaded.parameters)))
    if len(ids) - common <= most:
        return None
    return _score_ids(engine, ids[:common + most], previous)


def next_token_logits(engine, text, prefix=None):
    """The model's logits for the token after `text` (float32, [vocab]) and `text`'s Prefix for later reuse.

    No token healing: the chart shows what follows the text exactly as typed.
    """
    ids = engine.vocab.ids(text)
    ids = ids[-(engine.loaded.max_context - 1):] or [engine.start_id]
    cache, common = engine.reusable(prefix, ids)
    piece = torch.tensor([ids[common:]], device=engine.device)
    out = engine.model(input_ids=piece, cache=cache, use_cache=True, logits_to_keep=1)
    return out.logits[0, -1].float(), Prefix(ids, kvcache.growing(out.cache))

def distribution(vocab, logits, settings, top=DISTRIBUTION_TOP):
    """The `top` likeliest next tokens: the model's probability and the one sampling with `settings` gives.

    A token that holds part of a character is `partial`; its text shows its bytes (<0xE4>).
    """
    # never NaN in the answer (JSON has no NaN): a model's broken logits show as probability 0
    model_probs = torch.nan_to_num(torch.softmax(logits.float(), dim=-1), nan=0.0)
    shaped = torch.nan_to_num(reshape(logits[None], settings)[0], nan=0.0)
    values, order = model_probs.topk(top)
    # a token holding part of a character shows its bytes (<0xE4>) and says so: the chart shows one step
    tokens = [{"text": vocab.shown([token]), "prob": round(prob, 6), "shaped": round(float(shaped[token]), 6),
               "kept": bool(shaped[token] > 0), "partial": REPLACEMENT in vocab.piece(token)}
              for token, prob in zip(order.tolist(), values.tolist())]
    return {"tokens": tokens, "candidates": int((shaped > 0).sum()), "vocabulary": int(logits.shape[-1]),
            "shown_mass": round(float(values.sum()), 6),
            "shown_shaped_mass": round(float(shaped[order].sum()), 6)}
