"""What the engine keeps between calls: a request's options and their cache, and a tab's prompt cache."""
import math
from dataclasses import dataclass, field

import torch

from . import kvcache
from .detokenizer import StreamingDetokenizer
from .stopping import StepStop


@dataclass
class Option:
    """One continuation being written."""

    detokenizer: StreamingDetokenizer
    heal: str  # raw token text still to re-spell (token healing); '' once done
    tokens: list = field(default_factory=list)  # every sampled id, in order
    text: str = ""  # text after the caret, as sent to the client
    pending: int | None = None  # sampled but not yet fed to the model
    finish: str | None = None  # why the current step ended; None while writing
    step_tokens: int = 0
    step_text: str = ""
    logprob: float = 0.0  # sum of the model's own log-probabilities of `tokens` (before any reshaping)

    def mean_logprob(self):
        """Average log-probability per token, so that options of any length compare."""
        return self.logprob / len(self.tokens) if self.tokens else None


class HoldsCache:
    """Something that keeps a KV cache in its `cache` field."""

    def cache_bytes(self):
        """Memory held by the kept keys and values."""
        return kvcache.cache_bytes(self.cache)


@dataclass
class Prefix(HoldsCache):
    """A prompt's KV cache (a batch of one), kept so that the next TAB on a growing document reads only what is new."""

    ids: list
    cache: object


@dataclass
class Generation(HoldsCache):
    """The state of one request's options: settings, prompt, KV cache and per-option progress."""

    settings: object
    prompt_ids: list  # what the model reads before the options (after truncation and healing)
    options: list
    generator: torch.Generator
    stop: StepStop | None = None  # set when writing starts, after the prompt has been read
    truncated: int = 0  # prompt tokens dropped from the left to fit the context window
    healed: str = ""  # prompt text that was handed back to the model to re-spell
    healed_id: int | None = None  # the prompt's last token, when it was handed back
    # transformers Cache of one row: the prompt's keys and values, then the options' fed tokens (see shared_prompt)
    cache: object = None
    mask: torch.Tensor | None = None  # [n, cache length] bool: the positions each option sees (prompt and its own)
    positions: torch.Tensor | None = None  # [n] position id of each option's next fed token
    prefix: Prefix | None = None  # this prompt's own cache, for the caller to keep (see Engine.start)
    reused: int = 0  # prompt tokens whose keys and values came from the previous prompt's cache
    failure: Exception | None = None  # what failed this request alone (its options stopped); the caller says so

    def fail(self, error):
        """Stop every option for good: choosing this request's tokens failed (the others in its batch go on)."""
        self.failure = error
        for option in self.options:
            if option.finish is None:
                option.finish = "cancelled"
            option.pending = None

    @property
    def finished(self):
        """True when no option is still writing."""
        return all(option.finish is not None for option in self.options)

    def texts(self):
        """The full text of every option."""
        return [option.text for option in self.options]

    def finishes(self):
        """Why every option stopped."""
        return [option.finish for option in self.options]

    def likelihoods(self):
        """Per option: the average log-probability of its tokens and the perplexity that gives."""
        return [likelihood(option.mean_logprob()) for option in self.options]


def common_length(cached_ids, ids):
    """How many of `ids` begin as `cached_ids` do."""
    common = 0
    for old, new in zip(cached_ids, ids):
        if old != new:
            break
        common += 1
    return common


def read_ids(generation):
    """What the model reads of a generation's text: the prompt, and the token healing handed back (read ahead)."""
    return generation.prompt_ids + ([generation.healed_id] if generation.healed_id is not None else [])


def keep_common_start(cached_ids, cache, ids):
    """How many of `ids` begin as `cached_ids` do, and `cache` (one position per cached id) cut back to them.

    Returns (None, 0) when they share nothing.
    """
    return cut_back(cache, len(cached_ids), common_length(cached_ids, ids))


def cut_back(cache, length, common):
    """`cache` (`length` positions) cut back to its first `common`, and `common`; (None, 0) when that is none."""
    if common == 0:
        return None, 0
    if common < length:
        cache.crop(common - length)  # a negative count: positions to drop from the end
    return cache, common


def likelihood(mean_logprob):
    """An average log-probability per token and the perplexity it gives, rounded for the page."""
    if mean_logprob is None:
        return {"logprob": None, "perplexity": None}
    return {"logprob": round(mean_logprob, 4), "perplexity": round(math.exp(-mean_logprob), 3)}
