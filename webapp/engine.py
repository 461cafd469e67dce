"""Generate several options at once, one token per step, from a prompt's shared KV cache.

The engine knows nothing of Flask or sockets. The scheduler drives it through a
narrow interface: `start` (prefill and first token), `step` (one more token for
every live option), `extend` (begin another step on a finished set) and `release`.
Each call returns one text delta per option, so callers can stream them.
"""
import dataclasses
import itertools
import math
import random
import time
from dataclasses import dataclass, field

import torch
from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor

from . import decoder_step, fused, kvcache, shared_prompt
from .config import GRAPH_MODES
from .detokenizer import StreamingDetokenizer
from .fixed_steps import FixedSteps
from .healing import TokenHealer
from .protocol import BEAM
from .sampling import candidates, choose_next_tokens, is_greedy, reshape
from .stopping import StepStop

PRIME_CHUNK = 128  # prompt tokens read per priming call, so that a TAB waits for one chunk at most
ROOM_STEPS = 8  # the prompt leaves room in the context window for this many length steps
# A stack nobody uses any more is kept for the next one up to this size (thirty students on the embedded model
# take about 500 MB; on GPT-2 large, 4 GB, which is let go)
SPARE_STACK_BYTES = 1 << 30
DETOKENIZER_CONTEXT = 6  # prompt tokens the detokenizer sees before the options' own
SCORE_ALTERNATIVES = 5  # the model's likeliest tokens shown for each scored position
DISTRIBUTION_TOP = 20  # next-token candidates sent for the distribution chart


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


class _HoldsCache:
    """Something that keeps a KV cache in its `cache` field."""

    def cache_bytes(self):
        """Memory held by the kept keys and values."""
        return kvcache.cache_bytes(self.cache)


@dataclass
class Prefix(_HoldsCache):
    """A prompt's KV cache (a batch of one), kept so that the next TAB on a growing document reads only what is new."""

    ids: list
    cache: object


@dataclass
class Scored(_HoldsCache):
    """A tab's last scored tokens, their results and the keys and values of the model's inputs for them."""

    ids: list
    results: list  # per token: (id, log-probability, rank, [(alternative id, log-probability), ...])
    cache: object


@dataclass
class Generation(_HoldsCache):
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
        return [_likelihood(option.mean_logprob()) for option in self.options]


def _common_length(cached_ids, ids):
    """How many of `ids` begin as `cached_ids` do."""
    common = 0
    for old, new in zip(cached_ids, ids):
        if old != new:
            break
        common += 1
    return common


def _read_ids(generation):
    """What the model reads of a generation's text: the prompt, and the token healing handed back (read ahead)."""
    return generation.prompt_ids + ([generation.healed_id] if generation.healed_id is not None else [])


def _keep_common_start(cached_ids, cache, ids):
    """How many of `ids` begin as `cached_ids` do, and `cache` (one position per cached id) cut back to them.

    Returns (None, 0) when they share nothing.
    """
    return _cut_back(cache, len(cached_ids), _common_length(cached_ids, ids))


def _cut_back(cache, length, common):
    """`cache` (`length` positions) cut back to its first `common`, and `common`; (None, 0) when that is none."""
    if common == 0:
        return None, 0
    if common < length:
        cache.crop(common - length)  # a negative count: positions to drop from the end
    return cache, common


def _likelihood(mean_logprob):
    if mean_logprob is None:
        return {"logprob": None, "perplexity": None}
    return {"logprob": round(mean_logprob, 4), "perplexity": round(math.exp(-mean_logprob), 3)}


class Engine:
    """Owns one loaded model; call its methods from one thread at a time."""

    def __init__(self, loaded, graphs="auto"):
        """Wrap a LoadedModel (see models.py).

        `graphs` says how batched decoding steps run: "auto" as fixed-shape steps replayed
        as CUDA graphs on a CUDA device (fixed_steps.py), as they come elsewhere; "eager" in
        fixed shapes without capturing (any device: what the tests check on a CPU); "off"
        as they come.
        """
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.device = torch.device(loaded.device)
        self.healer = TokenHealer(self.tokenizer)
        self.pad_id = min(loaded.eos_ids) if loaded.eos_ids else 0
        # a document starts after the separator the model saw between documents in training
        # (<|endoftext|> in GPT-2-style vocabularies; an instruct model's bos token opens a chat turn instead)
        start = self.tokenizer.get_vocab().get("<|endoftext|>", self.tokenizer.bos_token_id)
        self.start_id = start if start is not None else self.pad_id
        self._pieces = {}  # token id -> its text
        self._stack = None  # the batched steps' kvcache.Stack, a row per request, kept while anyone in it writes on
        # the last stack, once nobody used it: the next one reuses its memory (fresh memory costs a page fault each
        # 4 kB on first touch: a class's stack is hundreds of MB)
        self._spare = None
        shared_prompt.install(self.model)
        fused.fuse(self.model)
        decoder_step.install(self.model)
        _feed_densely(self.model.get_output_embeddings())
        self.fixed = self._fixed_steps(graphs)  # None: steps run in the shapes they come in

    def _fixed_steps(self, graphs):
        """The FixedSteps that `graphs` asks for, or None."""
        if graphs not in GRAPH_MODES:
            raise ValueError(f"graphs must be one of {', '.join(GRAPH_MODES)}, not {graphs!r}")
        if graphs == "off" or (graphs == "auto" and self.device.type != "cuda"):
            return None
        if decoder_step.step_plan(self.model.base_model) is not None:
            return None  # our C step runs these steps on the CPU
        return FixedSteps(self.model, self.pad_id, capture=graphs != "eager")

    # ---- the narrow interface -------------------------------------------------------

    @torch.inference_mode()
    def start(self, text, settings, prefix=None):
        """Read the prompt once, share it across `settings.n` options, and sample their first tokens.

        `prefix` (the Prefix of this client's previous prompt) lets the prompt's common
        beginning be taken from its cache instead of read again; it is used up. The new
        prompt's own Prefix is left in `generation.prefix` for the caller to keep.

        With token healing the removed last token is read too, one position ahead: when
        every option re-spells it as it was (the usual case), its keys and values are
        already in the cache and the options' next tokens are sampled at once, so the first
        visible words come without waiting a decoding step.
        """
        return self.start_many([(text, settings, prefix)])[0]

    @torch.inference_mode()
    def start_many(self, requests):
        """`start` for several (text, settings, prefix) at once: one forward pass reads every prompt's unread part.

        Returns (generation, deltas) per request. Reading a few new tokens costs about as
        much as a decoding step (the weights are read either way), so requests that each
        read little are best read together. Beam search reads its prompt on its own.
        """
        generations = [self.prepare(text, settings) for text, settings, _ in requests]
        reading = [(generation, prefix) for generation, (_, _, prefix) in zip(generations, requests)
                   if generation.settings.mode != BEAM]
        read = iter(self._read_prompts(reading) if reading else [])
        started = []
        for generation, (_, settings, prefix) in zip(generations, requests):
            if settings.mode == BEAM:  # generate() reads the prompt itself; the tab's Prefix stays as it was
                generation.prefix = prefix
                started.append((generation, self._write_beams(generation)))
            else:
                started.append((generation, self._begin(generation, *next(read))))
        return started

    def unread(self, text, settings, prefix=None):
        """How many tokens `start` would read for `text` (what `prefix` does not hold already); no model work."""
        generation = self.prepare(text, settings)
        return len(_read_ids(generation)) - self._held(prefix, generation.prompt_ids)

    def _read_prompts(self, items):
        """Per (generation, prefix): its whole prompt's cache (batch of one) and its last two positions' logits.

        One prompt is read as it is. Several are read in one pass: their caches stacked,
        left-padded to the longest, and their unread tokens after them, left-padded too
        (the mask hides both paddings); each prompt's cache is then cut back out.
        """
        caches, unread = [], []
        for generation, prefix in items:
            cache, generation.reused = self._reusable(prefix, generation.prompt_ids)
            caches.append(cache)
            unread.append(_read_ids(generation)[generation.reused:])
        if len(items) == 1:
            out = self.model(input_ids=torch.tensor(unread, device=self.device), cache=caches[0], use_cache=True,
                             logits_to_keep=2)
            return [(out.cache, out.logits[0])]
        held = [generation.reused for generation, _ in items]  # each cache's length, set just above
        width, longest = max(held), max(len(ids) for ids in unread)
        ids = torch.full((len(items), longest), self.pad_id, dtype=torch.long, device=self.device)
        mask = torch.zeros((len(items), width + longest), dtype=torch.long, device=self.device)
        positions = torch.zeros_like(ids)
        for row, (new, length) in enumerate(zip(unread, held)):
            ids[row, longest - len(new):] = torch.tensor(new, device=self.device)
            mask[row, width - length:width] = 1
            mask[row, width + longest - len(new):] = 1
            positions[row, longest - len(new):] = torch.arange(length, length + len(new), device=self.device)
        stacked = kvcache.left_padded(caches, width) if width else None
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=stacked, use_cache=True,
                         logits_to_keep=2)
        return [(kvcache.row_of(out.cache, row, width - length, width, len(new)), out.logits[row])
                for row, (new, length) in enumerate(zip(unread, held))]

    def _begin(self, generation, cache, logits):
        """Given its prompt's cache and last logits, set up a generation's options and sample their first tokens."""
        settings, ahead = generation.settings, generation.healed_id is not None
        generation.prefix = Prefix(_read_ids(generation), kvcache.growing(cache))
        # the options read the prompt's keys and values where they are (their own tokens are written after them,
        # in a buffer of the first step's own), and the Prefix (the client's, for the next Tab) will not write over them
        kvcache.lend(generation.prefix.cache)
        generation.cache = kvcache.views_of(cache)
        generation.mask = torch.ones((settings.n, len(generation.prefix.ids)), dtype=torch.bool, device=self.device)
        generation.positions = torch.full((settings.n,), len(generation.prompt_ids), dtype=torch.long,
                                          device=self.device)
        # the time budget is for writing: a long prompt on a slow CPU must not use it all up
        generation.stop = self._stop_rule(settings)
        # the last logit follows the whole text; with healing, the one before it chooses the re-spelled token
        deltas = self._sample(generation, logits[-1 - ahead].expand(settings.n, -1))
        if not ahead:
            return deltas
        # an option that re-spelled the token as it was finds it read already, and its next token follows at once;
        # one that spelled it differently hides the read-ahead position and feeds its own choice next step
        kept = [o.finish is None and o.tokens[-1] == generation.healed_id for o in generation.options]
        if not any(kept):  # nobody can use the read-ahead position: it goes
            generation.cache.crop(-1)
            generation.mask = generation.mask[:, :-1]
            return deltas
        kept = torch.tensor(kept, device=self.device)
        generation.mask[:, -1] = kept
        generation.positions += kept.long()
        for option, uses_it in zip(generation.options, kept.tolist()):
            if uses_it:
                option.pending = None
        later = self._sample(generation, logits[-1].expand(settings.n, -1), rows=kept.tolist())
        return [first + then for first, then in zip(deltas, later)]

    def step(self, generation):
        """Feed every live option its last token and sample the next one."""
        return self.step_many([generation])[0]

    @torch.inference_mode()
    def step_many(self, generations, joining=0):
        """One more token for every live option of every generation, in one batched pass; deltas per generation.

        Beam-search generations cannot join the batch: each writes its whole step on its own.
        `joining` counts requests about to join the batch (read, not yet writing: a class
        that pressed Tab at once): a new stack keeps rows for them, so that it is not made
        again, everyone copied, each time a few more arrive.
        """
        beams = {id(g): self._write_beams(g) for g in generations if g.settings.mode == BEAM}
        sampled = [g for g in generations if id(g) not in beams]
        stepped = iter(self._step_sampled(sampled, joining) if sampled else [])
        return [beams[id(g)] if id(g) in beams else next(stepped) for g in generations]

    def _step_sampled(self, generations, joining=0):
        """One forward pass for every live option of every generation (clients batched); deltas per generation.

        The generations' caches live in one kvcache.Stack, left-padded (masked) to the
        longest; it is kept from step to step, and requests join and leave it in place.
        """
        for generation in generations:
            if generation.cache is None:
                self._rebuild_cache(generation)
        if len(generations) == 1 and self._stack is None and self.fixed is None:
            return [self._step_alone(generations[0])]
        columns = max(len(g.options) for g in generations)  # each request's row gets as many columns this step
        stack = self._stack = kvcache.Stack.holding(self._stack, generations, columns,
                                                    self.fixed.room if self.fixed else None, joining, self._spare)
        if stack is self._spare:
            self._spare = None
        batch = stack.holders  # the generations in the stack's row order
        lives = [self._live(g) for g in batch]
        owns = [self._own_columns(live, columns) for live in lives]
        feed = torch.cat([self._feed(g) for g in batch])
        positions = torch.cat([g.positions for g in batch])
        option_rows = self._option_rows(batch, owns, stack.width)
        if self.fixed is not None:
            logits = self.fixed.logits(stack, feed, positions, option_rows)
        else:
            logits = self._forward(input_ids=feed, position_ids=positions[:, None], cache=stack.cache(),
                                   use_cache=True, option_rows=option_rows).logits[:, -1, :]
        stack.advance(columns)
        for generation, live, own in zip(batch, lives, owns):
            self._advance(generation, live, own)
        deltas = dict(zip(map(id, batch), self._sample_many(batch, logits)))
        for generation in batch:
            # one that goes on keeps views into the stack (the next step writes on in it);
            # one that ended gets its own compact copy, to be kept for extend or dropped
            generation.cache = stack.cut(generation, separate=generation.finished)
        if all(generation.finished for generation in batch):
            self._let_go_of_the_stack()  # everyone has their own copy
        return [deltas[id(generation)] for generation in generations]

    def _let_go_of_the_stack(self):
        """Nobody writes in the stack any more: keep it (if not too big) for the next one to reuse its memory."""
        self._spare = self._stack if self._stack.bytes() <= SPARE_STACK_BYTES else None
        self._stack = None

    def _option_rows(self, generations, owns, width):
        """The OptionRows of a step: every generation's row (left-padded to `width`), its options' queries on it.

        `owns` holds each generation's columns of this step (see _own_columns).
        """
        options = max(len(generation.options) for generation in generations)
        columns = owns[0].shape[1]
        visible = torch.zeros((len(generations), options, width + columns), dtype=torch.bool, device=self.device)
        slots, uniform = [], True
        row = 0
        for index, (generation, own) in enumerate(zip(generations, owns)):
            count, seen = len(generation.options), generation.mask
            visible[index, :count, width - seen.shape[1]:width] = seen
            visible[index, :count, width:] = own
            visible[index, count:, width - seen.shape[1]:width] = True  # a request with fewer options: unused queries
            slots.append(list(range(row, row + count)) + [row] * (options - count))
            uniform &= count == options
            row += count
        if uniform:  # the batch's rows are the requests' options in order, as many each
            return shared_prompt.OptionRows(visible)
        flat = [slot for request in slots for slot in request]
        slot_of_row = [index * options + option for index, generation in enumerate(generations)
                       for option in range(len(generation.options))]
        return shared_prompt.OptionRows(visible, torch.tensor(flat, device=self.device),
                                        torch.tensor(slot_of_row, device=self.device))

    def _forward(self, **inputs):
        """The model's forward pass; with OptionRows, the cache's layers write the options' keys into their rows."""
        option_rows = inputs.get("option_rows")
        layers = inputs["cache"].layers if option_rows is not None else []
        for layer in layers:
            layer.regroup = option_rows.regroup
        try:
            out = self.model(**inputs)
        except Exception as error:  # a model whose attention went its own way may also trip over the shapes
            if option_rows is not None and option_rows.calls == 0:
                raise shared_prompt.bypassed_the_interface() from error
            raise
        finally:
            for layer in layers:
                layer.regroup = None
        if option_rows is not None and option_rows.calls == 0:
            raise shared_prompt.bypassed_the_interface()
        return out

    def _live(self, generation):
        return torch.tensor([o.finish is None for o in generation.options], device=self.device)

    def _feed(self, generation):
        return torch.tensor([[o.pending if o.finish is None else self.pad_id] for o in generation.options],
                            device=self.device)

    def _own_columns(self, live, columns):
        """What each option sees of a step's `columns` new columns: its own, if live (finished ones ride hidden)."""
        own = torch.zeros((len(live), columns), dtype=torch.bool, device=self.device)
        own[:, :len(live)] = torch.diag(live)
        return own

    def _advance(self, generation, live, own):
        """Record that every live option's pending token is now in the cache, in the step's columns `own`."""
        generation.mask = torch.cat([generation.mask, own], dim=1)
        generation.positions += live.long()
        for option in generation.options:
            if option.finish is None:
                option.pending = None

    def _step_alone(self, generation):
        """One generation's step, without the cost of stacking caches."""
        live = self._live(generation)
        own = self._own_columns(live, len(generation.options))
        out = self._forward(input_ids=self._feed(generation), position_ids=generation.positions[:, None],
                            cache=generation.cache, use_cache=True,
                            option_rows=self._option_rows([generation], [own], generation.mask.shape[1]))
        generation.cache = out.cache
        self._advance(generation, live, own)
        return self._sample(generation, out.logits[:, -1, :])

    @torch.inference_mode()
    def score(self, text, previous=None):
        """How likely the model finds `text` (its last context window), token by token, and its perplexity.

        Every token is predicted from the ones before it; the first from the start-of-text
        token. Each scored token carries its log-probability, its rank among all tokens the
        model could have put there (1 = the likeliest), the model's likeliest alternatives,
        and where it ends in `text` (in UTF-16 code units, as the page counts). Perplexity is
        exp of the mean negative log-likelihood over the scored tokens.

        `previous` (the Scored of this tab's last score, used up) lets the tokens `text`
        still begins with keep their results and their keys and values, so that only the
        new tokens are read. Returns the scores and the new Scored (None for an empty text).
        """
        ids, ends = self._encode_with_ends(text)
        truncated = max(0, len(ids) - (self.loaded.max_context - 1))
        scored_from = ends[truncated - 1] if truncated else 0
        ids, ends = ids[truncated:], ends[truncated:]
        if not ids:
            return {"tokens": [], "perplexity": None, "truncated_tokens": truncated, "scored_from": scored_from}, None
        scored = self._score_ids(ids, previous)
        tokens = [
            {"text": self._piece(token), "logprob": round(value, 5), "rank": rank, "end": end,
             "top": [{"text": self._piece(other), "logprob": round(other_value, 4)} for other, other_value in top]}
            for (token, value, rank, top), end in zip(scored.results, ends)
        ]
        mean = sum(value for _, value, _, _ in scored.results) / len(scored.results)
        return {"tokens": tokens, "perplexity": math.exp(-mean), "truncated_tokens": truncated,
                "scored_from": scored_from}, scored

    def _score_ids(self, ids, previous):
        """Per token of `ids`: (id, log-probability, rank, top alternatives); reusing what `previous` scored."""
        if previous is not None and previous.ids == ids:
            return previous
        # the model's inputs are [start] + ids[:-1]: the cache holds one position per scored token
        cache, common = _keep_common_start(previous.ids, previous.cache, ids) if previous else (None, 0)
        if common == len(ids):  # the text only lost its end: every token left is scored already
            return Scored(list(ids), previous.results[:common], cache)
        inputs = torch.tensor([([self.start_id] + ids[:-1])[common:]], device=self.device)
        out = self.model(input_ids=inputs, cache=cache, use_cache=True)
        logprobs = torch.log_softmax(out.logits[0].float(), dim=-1)
        actual = logprobs.gather(1, torch.tensor(ids[common:], device=self.device)[:, None])[:, 0]
        ranks = ((logprobs > actual[:, None]).sum(dim=1) + 1).tolist()
        top_values, top_ids = logprobs.topk(SCORE_ALTERNATIVES, dim=-1)
        fresh = [(token, value, rank, list(zip(others, other_values))) for token, value, rank, others, other_values
                 in zip(ids[common:], actual.tolist(), ranks, top_ids.tolist(), top_values.tolist())]
        kept = previous.results[:common] if common else []
        return Scored(list(ids), kept + fresh, out.cache)

    def _encode_with_ends(self, text):
        """Token ids of `text` and where each token ends in it, counted in UTF-16 code units (as JavaScript counts)."""
        if not text:
            return [], []
        if not self.tokenizer.is_fast:  # no offsets: add up the decoded pieces
            ids = self._token_ids(text)
            ends = list(itertools.accumulate(len(self._piece(token)) for token in ids))
        else:
            encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            ids, ends = encoded["input_ids"], [end for _, end in encoded["offset_mapping"]]
        utf16 = [0, *itertools.accumulate(2 if ord(char) > 0xFFFF else 1 for char in text)]
        ends = list(itertools.accumulate((min(end, len(text)) for end in ends), max))  # never backwards
        if ends:
            ends[-1] = len(text)  # trailing text the offsets leave out belongs to the last token
        return ids, [utf16[end] for end in ends]

    def _token_ids(self, text):
        """The token ids of `text` as the model reads it (no special tokens added)."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _piece(self, token):
        """The text of one token, remembered: scoring and the distribution chart show thousands of them."""
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self._decode([token])
        return piece

    @torch.inference_mode()
    def next_token_logits(self, text, prefix=None):
        """The model's logits for the token after `text` (float32, [vocab]) and `text`'s Prefix for later reuse.

        No token healing: the chart shows what follows the text exactly as typed.
        """
        ids = self._token_ids(text)
        ids = ids[-(self.loaded.max_context - 1):] or [self.start_id]
        cache, common = self._reusable(prefix, ids)
        piece = torch.tensor([ids[common:]], device=self.device)
        out = self.model(input_ids=piece, cache=cache, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1].float(), Prefix(ids, kvcache.growing(out.cache))

    def distribution(self, logits, settings, top=DISTRIBUTION_TOP):
        """The `top` likeliest next tokens: the model's probability and the one sampling with `settings` gives."""
        model_probs = torch.softmax(logits.float(), dim=-1)
        shaped = reshape(logits[None], settings)[0]
        values, order = model_probs.topk(top)
        tokens = [{"text": self._piece(token), "prob": round(prob, 6), "shaped": round(float(shaped[token]), 6),
                   "kept": bool(shaped[token] > 0)}
                  for token, prob in zip(order.tolist(), values.tolist())]
        return {"tokens": tokens, "candidates": int((shaped > 0).sum()), "vocabulary": int(logits.shape[-1]),
                "shown_mass": round(float(values.sum()), 6),
                "shown_shaped_mass": round(float(shaped[order].sum()), 6)}

    @torch.inference_mode()
    def prime(self, text, settings, prefix=None, chunk=PRIME_CHUNK):
        """Read up to `chunk` more tokens of the prompt `text` would give; return (Prefix or None, all read).

        Everything but the prompt's last token is read: a TAB reads that one itself, for its
        logits. Calling again with the returned Prefix goes on where this call stopped.
        """
        ids = self.prepare(text, settings).prompt_ids
        target = ids[:-1]
        cache, common = self._reusable(prefix, ids)
        upto = min(len(target), common + chunk)
        if upto > common:
            piece = torch.tensor([target[common:upto]], device=self.device)
            cache = self.model(input_ids=piece, cache=cache, use_cache=True, logits_to_keep=1).cache
        return (Prefix(target[:upto], kvcache.growing(cache)) if cache is not None else None), upto == len(target)

    def _reusable(self, prefix, ids):
        """The previous prompt's cache cut to the part `ids` shares with it, and that part's length."""
        common = self._held(prefix, ids)
        return _cut_back(prefix.cache, len(prefix.ids), common) if common else (None, 0)

    def _held(self, prefix, ids):
        """How many of the prompt `ids` the previous prompt's cache holds (never the last: it is read for logits)."""
        if prefix is None or not all(getattr(layer, "is_croppable", False) for layer in prefix.cache.layers):
            return 0
        return _common_length(prefix.ids, ids[:-1])

    def warm_up(self):
        """Run one tiny request so the first real TAB does not pay for lazy initialisation."""
        from .protocol import SamplingSettings

        generation, _ = self.start("Hello", SamplingSettings(n=2, length=2, seed=0))
        while not generation.finished:
            self.step(generation)

    def extend(self, generation, overrides=None):
        """Begin another step on every option that can go on; the next `step` writes it."""
        settings = dataclasses.replace(generation.settings, **(overrides or {}))
        generation.settings = settings
        if (overrides or {}).get("seed") is not None:
            generation.generator.manual_seed(settings.seed)
        generation.stop = self._stop_rule(settings)
        for option in generation.options:
            if option.finish not in ("eos", "context"):
                option.finish, option.step_tokens, option.step_text = None, 0, ""

    def cancel(self, generation):
        """Stop every option where it is (it can still be extended later)."""
        for option in generation.options:
            if option.finish is None:
                option.finish = "cancelled"
        kvcache.compact(generation.cache)  # let go of the batch it was stacked in
        if self._stack is not None and not any(member.in_place() for member in self._stack.members):
            self._let_go_of_the_stack()

    def release(self, generation):
        """Drop the KV cache; a later extend re-reads the prompt and options instead."""
        generation.cache = generation.mask = generation.positions = None

    def flush(self, generation):
        """Text held back by the detokenizers of options that have just ended (rarely non-empty)."""
        deltas = []
        for option in generation.options:
            tail = option.detokenizer.flush() if option.finish == "eos" else ""
            option.text += tail
            deltas.append(tail)
        return deltas

    # ---- preparing a prompt ---------------------------------------------------------

    def prepare(self, text, settings):
        """Tokenize, keep what fits the window, and apply token healing; no model work."""
        ids = self._token_ids(text)
        budget = self.loaded.max_context - min(settings.length * ROOM_STEPS, self.loaded.max_context // 2)
        truncated = max(0, len(ids) - budget)
        ids = ids[truncated:] or [self.start_id]
        # beam search compares whole sequences; re-spelling the last word would skew them
        kept, healed_piece = self._heal(ids) if settings.mode != BEAM else (list(ids), "")
        healed = self._decode([ids[-1]]) if healed_piece else ""
        context = kept[-DETOKENIZER_CONTEXT:]
        options = [Option(StreamingDetokenizer(self.tokenizer, context, skip_chars=len(healed)), healed_piece)
                   for _ in range(settings.n)]
        generator = torch.Generator(device=self.device)
        generator.manual_seed(settings.seed if settings.seed is not None else random.getrandbits(63))
        return Generation(settings, kept, options, generator, truncated=truncated, healed=healed,
                          healed_id=ids[-1] if healed_piece else None)

    def _heal(self, ids):
        kept, piece = self.healer.split_prompt(ids)
        # never hand back half a character: its bytes would decode differently on their own
        if piece and "\ufffd" in self._decode(ids[-1:]) + self._decode(kept[-1:]):
            return list(ids), ""
        return kept, piece

    def _stop_rule(self, settings):
        return StepStop(settings.length, time.monotonic() + settings.max_time, settings.stop_at,
                        self.loaded.eos_ids)

    # ---- sampling ---------------------------------------------------------------------

    def _sample(self, generation, logits, rows=None):
        """Choose a token for every live option (of `rows` only, if given), update its text, decide if it stops."""
        chosen = self._choose(generation, logits)
        return self._record_choices(generation, chosen.tolist(), _logprobs_of(logits, chosen), rows)

    def _sample_many(self, generations, logits):
        """`_sample` for a batched step: `logits` [rows, vocab] holds each generation's options in turn.

        A class's generations mostly share their settings: their rows get the
        log-probabilities and the candidates (temperature, top-k, top-p) in one go, and
        each generation draws from its own rows with its own generator, as alone (the
        same tokens: every row is computed as it would be by itself). At 30 clients
        sampling one by one took about a quarter of a step.
        """
        logits = logits.float()
        spans, at = [], 0  # each generation's rows
        for generation in generations:
            spans.append(slice(at, at + len(generation.options)))
            at += len(generation.options)
        chosen, alike = torch.empty(logits.shape[0], dtype=torch.long, device=logits.device), {}
        for generation, rows in zip(generations, spans):
            if self._samples_plainly(generation):
                alike.setdefault(_sampling_key(generation.settings), []).append((generation, rows))
            else:
                chosen[rows] = self._choose(generation, logits[rows])
        for members in alike.values():
            settings, together = members[0][0].settings, _rows_of(logits, [rows for _, rows in members])
            if is_greedy(settings):
                picks = together.argmax(dim=-1)
            else:
                ids, probabilities = candidates(together, settings)
            at = 0
            for generation, rows in members:
                mine = slice(at, at + rows.stop - rows.start)  # its rows in `together`
                at = mine.stop
                if is_greedy(settings):
                    chosen[rows] = picks[mine]
                else:
                    drawn = torch.multinomial(probabilities[mine], num_samples=1, generator=generation.generator)
                    chosen[rows] = ids[mine].gather(-1, drawn)[:, 0]
        logprobs, chosen = _logprobs_of(logits, chosen), chosen.tolist()
        return [self._record_choices(generation, chosen[rows], logprobs[rows])
                for generation, rows in zip(generations, spans)]

    def _samples_plainly(self, generation):
        """Whether a generation's choice is its settings' alone (no repeat ban, no healing mask to apply)."""
        return not generation.settings.no_repeat_ngram and not _heals(generation.options)

    def _choose(self, generation, logits):
        """A token id per option (row of `logits`), as its settings, repeat ban and token healing say."""
        allowed = self._healing_mask(generation.options, logits.shape[-1])
        return choose_next_tokens(self._ban_repeats(generation, logits), generation.settings,
                                  generation.generator, allowed)

    def _record_choices(self, generation, chosen, logprobs, rows=None):
        """Each live option's (of `rows` only, if given) chosen token and its log-probability recorded; the deltas."""
        now = time.monotonic()
        deltas = []
        for row, (option, token_id, logprob) in enumerate(zip(generation.options, chosen, logprobs)):
            if option.finish is not None or (rows is not None and not rows[row]):
                deltas.append("")
                continue
            deltas.append(self._record(generation, row, option, token_id, logprob, now))
        return deltas

    def _ban_repeats(self, generation, logits):
        """Logits with every token that would repeat an n-gram of prompt + option made impossible (when asked)."""
        size = generation.settings.no_repeat_ngram
        if not size:
            return logits
        ban = NoRepeatNGramLogitsProcessor(size)
        banned = logits.clone()
        for row, option in enumerate(generation.options):
            if option.finish is None:
                seen = torch.tensor([generation.prompt_ids + option.tokens], device=self.device)
                banned[row:row + 1] = ban(seen, banned[row:row + 1])
        return banned

    def _record(self, generation, row, option, token_id, logprob, now):
        option.logprob += logprob
        option.tokens.append(token_id)
        option.step_tokens += 1
        delta = ""
        if token_id not in self.loaded.eos_ids:
            option.pending = token_id
            if option.heal:
                option.heal = self.healer.advance(option.heal, token_id)
            delta = option.detokenizer.push(token_id)
        option.text += delta
        option.step_text += delta
        at_limit = int(generation.positions[row]) + 1 >= self.loaded.max_context
        option.finish = generation.stop.reason(token_id, option.step_tokens, option.step_text, now, at_limit)
        if option.heal and option.finish in ("sentence", "paragraph"):
            option.finish = None  # still re-spelling the user's own word: not a real stop
        return delta

    def _healing_mask(self, options, vocab):
        if not _heals(options):
            return None
        rows = [self.healer.mask(option.heal, vocab) if option.heal and option.finish is None
                else torch.zeros(vocab, dtype=torch.bool) for option in options]
        return torch.stack(rows).to(self.device)

    # ---- beam search -------------------------------------------------------------------

    def _write_beams(self, generation):
        """Write one step by beam search: first the n best beams of the prompt, on extend one more search per option.

        Beam search keeps several candidates and may drop any of them at the next step, so its
        text cannot be streamed word by word; each step arrives whole.
        """
        settings = generation.settings
        going = [option for option in generation.options if option.finish is None]
        if not any(option.tokens for option in generation.options):
            found = self._beam_search(generation.prompt_ids, settings, len(going))
        else:
            found = [self._beam_search(generation.prompt_ids + option.tokens, settings, 1)[0] for option in going]
        for option, (tokens, logprobs) in zip(going, found):
            option.step_tokens, option.step_text = 0, ""
            for token, logprob in zip(tokens, logprobs):
                option.logprob += logprob
                option.tokens.append(token)
                option.step_tokens += 1
                if token not in self.loaded.eos_ids:
                    delta = option.detokenizer.push(token)
                    option.text += delta
                    option.step_text += delta
            ended = any(token in self.loaded.eos_ids for token in tokens)
            full = len(generation.prompt_ids) + len(option.tokens) >= self.loaded.max_context
            option.finish = "eos" if ended else "context" if full else "length"
        deltas = {id(option): option.step_text for option in going}
        return [deltas.get(id(option), "") for option in generation.options]

    def _beam_search(self, ids, settings, count):
        """The `count` best beams after `ids`: (new token ids up to and including an end of text, their log-probs)."""
        room = self.loaded.max_context - len(ids)
        if room <= 0:
            return [([], [])] * count
        inputs = torch.tensor([ids], device=self.device)
        arguments = beam_arguments(settings, count, min(settings.length, room))
        out = self.model.generate(inputs, attention_mask=torch.ones_like(inputs), pad_token_id=self.pad_id,
                                  output_scores=True, return_dict_in_generate=True, **arguments)
        steps = self.model.compute_transition_scores(out.sequences, out.scores, out.beam_indices,
                                                     normalize_logits=False)
        found = []
        for sequence, logprobs in zip(out.sequences[:, len(ids):].tolist(), steps.tolist()):
            end = next((i + 1 for i, token in enumerate(sequence) if token in self.loaded.eos_ids), len(sequence))
            found.append((sequence[:end], logprobs[:end]))
        return found

    # ---- re-reading an evicted set -------------------------------------------------

    def _rebuild_cache(self, generation):
        """Read the prompt again, then every option's fed tokens after it in one pass, one option after another."""
        prompt = generation.prompt_ids
        out = self.model(input_ids=torch.tensor([prompt], device=self.device), use_cache=True, logits_to_keep=1)
        # between steps an option's last token is never in the cache (pending, or end of text)
        fed = [option.tokens[:-1] for option in generation.options]
        columns = len(prompt) + sum(len(tokens) for tokens in fed)
        mask = torch.zeros((len(fed), columns), dtype=torch.bool, device=self.device)
        mask[:, :len(prompt)] = True
        seen = torch.zeros((columns - len(prompt), columns), dtype=torch.bool, device=self.device)  # per fed token
        seen[:, :len(prompt)] = True
        start = len(prompt)
        for row, tokens in enumerate(fed):  # an option's token sees the prompt and its option's tokens up to itself
            mask[row, start:start + len(tokens)] = True
            count = len(tokens)
            seen[start - len(prompt):start - len(prompt) + count, start:start + count] = torch.ones(
                (count, count), dtype=torch.bool, device=self.device).tril()
            start += count
        cache = out.cache
        if columns > len(prompt):
            ids = torch.tensor([[token for tokens in fed for token in tokens]], device=self.device)
            positions = torch.tensor([[len(prompt) + i for tokens in fed for i in range(len(tokens))]],
                                     device=self.device)
            rows = shared_prompt.OptionRows(seen[None], rows_are_queries=False)
            cache = self._forward(input_ids=ids, position_ids=positions, cache=cache, use_cache=True,
                                  logits_to_keep=1, option_rows=rows).cache
        generation.cache = kvcache.growing(cache)
        generation.mask = mask
        generation.positions = torch.tensor([len(prompt) + len(tokens) for tokens in fed], device=self.device)

    def _decode(self, ids):
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _logprobs_of(logits, chosen):
    """The model's own log-probability of each row's chosen token (before temperature and the rest), as a list."""
    return torch.log_softmax(logits.float(), dim=-1).gather(1, chosen[:, None])[:, 0].tolist()


def _heals(options):
    """Whether any live option is still re-spelling the user's last word (token healing constrains its choice)."""
    return any(option.heal and option.finish is None for option in options)


def _rows_of(tensor, slices):
    """The rows of `tensor` in `slices` (in order), as a view where they follow each other."""
    if all(after.start == before.stop for before, after in zip(slices, slices[1:])):
        return tensor[slices[0].start:slices[-1].stop]
    return torch.cat([tensor[rows] for rows in slices])


def _sampling_key(settings):
    """Settings that choose alike: greedy ones all, sampled ones by temperature, top-k and top-p."""
    return ("greedy",) if is_greedy(settings) else (settings.temperature, settings.top_k, settings.top_p)


def _feed_densely(layer):
    """Lay out the output layer's input densely before it multiplies.

    Prompts read together keep each one's last two positions: a strided slice of the
    batch. On such a 3-D input, bfloat16 `F.linear` takes a path that copies the whole
    output weight once per prompt (6 prompts of the embedded model: 384 ms instead of 2).
    """
    if layer is not None and not getattr(layer, "_fed_densely", False):
        layer.register_forward_pre_hook(lambda module, args: (args[0].contiguous(), *args[1:]))
        layer._fed_densely = True


def beam_arguments(settings, count, length):
    """What `generate` is given for beam search with `settings`: the engine's beams are exactly generate's."""
    return {"num_beams": settings.beams, "num_return_sequences": count, "max_new_tokens": length,
            "no_repeat_ngram_size": settings.no_repeat_ngram, "do_sample": False, "early_stopping": True}


