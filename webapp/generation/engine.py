"""The local engine: several options at once, one token per step, from a prompt's shared KV cache.

It knows nothing of Flask or sockets. The scheduler drives it through the interface in
interface.py (prepare, start_many, step_many, extend, cancel, release, flush, score,
next-token logits and distribution, prime); every call that writes returns one text delta
per option, so callers can stream them. Choosing tokens is choosing.py's, scoring
scoring.py's, beam search beams.py's.
"""
import dataclasses
import random
import time

import torch

from . import beams, kvcache, scoring, shared_prompt
from .choosing import Chooser
from .detokenizer import StreamingDetokenizer
from .healing import TokenHealer
from .settings import BEAM, SamplingSettings
from .state import Generation, Option, Prefix, common_length, cut_back, read_ids
from .stopping import StepStop
from .tokens import Vocabulary

PRIME_CHUNK = 128  # prompt tokens read per priming call, so that a TAB waits for one chunk at most
ROOM_STEPS = 8  # the prompt leaves room in the context window for this many length steps
# A stack nobody uses any more is kept for the next one up to this size (thirty students on the embedded model
# take about 500 MB; on GPT-2 large, 4 GB, which is let go)
SPARE_STACK_BYTES = 1 << 30
# The most work one forward pass that reads prompts should do, weights x tokens (about half a second on the machine
# it was tuned on: docs/performance.md, "Thresholds"): the scheduler reads new prompts together up to it, and a
# beam search reads its prompt, once per beam, within it
PASS_WORK = 2.8e11
# The longest one beam-search step may hold the model (it cannot be paused: everyone else's step waits for it)
BEAM_SECONDS = 1.0
DETOKENIZER_CONTEXT = 6  # prompt tokens the detokenizer sees before the options' own


class Engine:
    """Owns one loaded model; call its methods from one thread at a time."""

    def __init__(self, loaded, beam_seconds=BEAM_SECONDS, pass_work=PASS_WORK):
        """Wrap a LoadedModel (see models/loading.py); `beam_seconds` and `pass_work` bound a beam-search step."""
        self.loaded = loaded
        self.beam_seconds = beam_seconds
        self.pass_work = pass_work
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.device = torch.device(loaded.device)
        self.healer = TokenHealer(self.tokenizer)
        self.pad_id = min(loaded.eos_ids) if loaded.eos_ids else 0
        # a document starts after the separator the model saw between documents in training
        # (<|endoftext|> in GPT-2-style vocabularies; an instruct model's bos token opens a chat turn instead)
        start = self.tokenizer.get_vocab().get("<|endoftext|>", self.tokenizer.bos_token_id)
        self.start_id = start if start is not None else self.pad_id
        self.vocab = Vocabulary(self.tokenizer)
        self.chooser = Chooser(loaded, self.healer, self.device)
        self._stack = None  # the batched steps' kvcache.Stack, a row per request, kept while anyone in it writes on
        # the last stack, once nobody used it: the next one reuses its memory (fresh memory costs a page fault each
        # 4 kB on first touch: a class's stack is hundreds of MB)
        self._spare = None
        shared_prompt.install(self.model)

    # ---- the interface (interface.py) ------------------------------------------------

    def start(self, text, settings, prefix=None):
        """`prepare` and `start_many` for one request: (generation, first deltas)."""
        return self.start_many([(self.prepare(text, settings), prefix)])[0]

    @torch.inference_mode()
    def start_many(self, requests):
        """Per (prepared Generation, prefix): read its prompt, share it across its options, sample their first tokens.

        One forward pass reads every prompt's unread part. Returns (generation, deltas) per
        request. `prefix` (the Prefix of this client's previous prompt) lets the prompt's
        common beginning be taken from its cache instead of read again; it is used up. The
        new prompt's own Prefix is left in `generation.prefix` for the caller to keep.
        Reading a few new tokens costs about as much as a decoding step (the weights are
        read either way), so requests that each read little are best read together. Beam
        search reads its prompt on its own.

        With token healing the removed last token is read too, one position ahead: when
        every option re-spells it as it was (the usual case), its keys and values are
        already in the cache and the options' next tokens are sampled at once, so the first
        visible words come without waiting a decoding step.
        """
        reading = [(generation, prefix) for generation, prefix in requests if generation.settings.mode != BEAM]
        read = iter(self._read_prompts(reading) if reading else [])
        started = []
        for generation, prefix in requests:
            if generation.settings.mode == BEAM:  # generate() reads the prompt itself; the tab's Prefix stays as it was
                generation.prefix = prefix
                started.append((generation, self._write_beams(generation)))
            else:
                started.append((generation, self._begin(generation, *next(read))))
        return started

    def unread(self, generation, prefix=None):
        """How many tokens `start_many` would read for a prepared generation (what `prefix` does not hold already)."""
        return len(read_ids(generation)) - self._held(prefix, generation.prompt_ids)

    def _read_prompts(self, items):
        """Per (generation, prefix): its whole prompt's cache (batch of one) and its last two positions' logits.

        One prompt is read as it is. Several are read in one pass: their caches stacked,
        left-padded to the longest, and their unread tokens after them, left-padded too
        (the mask hides both paddings); each prompt's cache is then cut back out.
        """
        caches, unread = [], []
        for generation, prefix in items:
            cache, generation.reused = self.reusable(prefix, generation.prompt_ids)
            caches.append(cache)
            unread.append(read_ids(generation)[generation.reused:])
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
        generation.prefix = Prefix(read_ids(generation), kvcache.growing(cache))
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
        deltas = self.chooser.sample(generation, logits[-1 - ahead].expand(settings.n, -1))
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
        later = self.chooser.sample(generation, logits[-1].expand(settings.n, -1), rows=kept.tolist())
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
        whole = {id(g): self._write_beams(g) for g in generations if g.settings.mode == BEAM}
        sampled = [g for g in generations if id(g) not in whole]
        stepped = iter(self._step_sampled(sampled, joining) if sampled else [])
        return [whole[id(g)] if id(g) in whole else next(stepped) for g in generations]

    def _write_beams(self, generation):
        """One beam-search step of a generation (beams.py); when it fails, the generation fails alone."""
        try:
            return beams.write_beams(self, generation)
        except Exception as error:
            generation.fail(error)
            return [""] * len(generation.options)

    def _step_sampled(self, generations, joining=0):
        """One forward pass for every live option of every generation (clients batched); deltas per generation.

        The generations' caches live in one kvcache.Stack, left-padded (masked) to the
        longest; it is kept from step to step, and requests join and leave it in place.
        """
        for generation in generations:
            if generation.cache is None:
                self._rebuild_cache(generation)
        if len(generations) == 1 and self._stack is None:
            return [self._step_alone(generations[0])]
        columns = max(len(g.options) for g in generations)  # each request's row gets as many columns this step
        stack = self._stack = kvcache.Stack.holding(self._stack, generations, columns, joining, self._spare)
        if stack is self._spare:
            self._spare = None
        batch = stack.holders  # the generations in the stack's row order
        lives = [self._live(g) for g in batch]
        owns = [self._own_columns(live, columns) for live in lives]
        feed = torch.cat([self._feed(g) for g in batch])
        positions = torch.cat([g.positions for g in batch])
        option_rows = self._option_rows(batch, owns, stack.width)
        logits = self._forward(input_ids=feed, position_ids=positions[:, None], cache=stack.cache(), use_cache=True,
                               option_rows=option_rows).logits[:, -1, :]
        stack.advance(columns)
        for generation, live, own in zip(batch, lives, owns):
            self._advance(generation, live, own)
        deltas = dict(zip(map(id, batch), self.chooser.sample_many(batch, logits)))
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
        return self.chooser.sample(generation, out.logits[:, -1, :])

    @torch.inference_mode()
    def score(self, text, previous=None):
        """Per-token log-probabilities, ranks and alternatives of `text`, and its perplexity (see scoring.score)."""
        return scoring.score(self, text, previous)

    @torch.inference_mode()
    def score_ahead(self, text, previous=None):
        """Read one pass's worth more of a long text to score (see scoring.score_ahead); None when the rest fits."""
        return scoring.score_ahead(self, text, previous)

    @torch.inference_mode()
    def next_token_logits(self, text, prefix=None):
        """The model's logits for the token after `text` and `text`'s Prefix (see scoring.next_token_logits)."""
        return scoring.next_token_logits(self, text, prefix)

    def distribution(self, logits, settings, top=scoring.DISTRIBUTION_TOP):
        """The `top` likeliest next tokens, as the model and as sampling with `settings` weigh them."""
        return scoring.distribution(self.vocab, logits, settings, top)

    @torch.inference_mode()
    def prime(self, text, settings, prefix=None, chunk=PRIME_CHUNK):
        """Read up to `chunk` more tokens of the prompt `text` would give; return (Prefix or None, all read).

        Everything but the prompt's last token is read: a TAB reads that one itself, for its
        logits. Calling again with the returned Prefix goes on where this call stopped.
        """
        ids = self.prepare(text, settings).prompt_ids
        target = ids[:-1]
        cache, common = self.reusable(prefix, ids)
        upto = min(len(target), common + chunk)
        if upto > common:
            piece = torch.tensor([target[common:upto]], device=self.device)
            cache = self.model(input_ids=piece, cache=cache, use_cache=True, logits_to_keep=1).cache
        return (Prefix(target[:upto], kvcache.growing(cache)) if cache is not None else None), upto == len(target)

    def reusable(self, prefix, ids):
        """The previous prompt's cache cut to the part `ids` shares with it, and that part's length."""
        common = self._held(prefix, ids)
        return cut_back(prefix.cache, len(prefix.ids), common) if common else (None, 0)

    def _held(self, prefix, ids):
        """How many of the prompt `ids` the previous prompt's cache holds (never the last: it is read for logits)."""
        if prefix is None or not all(getattr(layer, "is_croppable", False) for layer in prefix.cache.layers):
            return 0
        return common_length(prefix.ids, ids[:-1])

    def warm_up(self):
        """Run one tiny request so the first real TAB does not pay for lazy initialisation."""
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
        ids = self.vocab.ids(text)
        budget = self.loaded.max_context - min(settings.length * ROOM_STEPS, self.loaded.max_context // 2)
        truncated = max(0, len(ids) - budget)
        ids = ids[truncated:] or [self.start_id]
        # beam search compares whole sequences; re-spelling the last word would skew them
        kept, healed_piece = self._heal(ids) if settings.mode != BEAM else (list(ids), "")
        healed = self.vocab.decode([ids[-1]]) if healed_piece else ""
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
        if piece and "\ufffd" in self.vocab.decode(ids[-1:]) + self.vocab.decode(kept[-1:]):
            return list(ids), ""
        return kept, piece

    def _stop_rule(self, settings):
        return StepStop(settings.length, time.monotonic() + settings.max_time, settings.stop_at,
                        self.loaded.eos_ids)

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
