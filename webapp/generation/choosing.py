"""Choosing each live option's next token, and recording it: its text, its log-probability, whether it stops."""
import time

import torch
from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor

from .sampling import candidates, choose_next_tokens, is_greedy


class Chooser:
    """Picks and records the options' tokens for the engine: settings, repeat bans and token healing applied."""

    def __init__(self, loaded, healer, device):
        """`loaded`: the LoadedModel (its end-of-text ids and window); `healer`: the engine's TokenHealer."""
        self.loaded = loaded
        self.healer = healer
        self.device = device

    def sample(self, generation, logits, rows=None):
        """Choose a token for every live option (of `rows` only, if given), update its text, decide if it stops.

        When choosing fails, the generation fails (`Generation.fail`) and writes nothing more.
        """
        try:
            chosen = self._choose(generation, logits)
        except Exception as error:
            generation.fail(error)
            return [""] * len(generation.options)
        return self._record_choices(generation, chosen.tolist(), _logprobs_of(logits, chosen), rows)

    def sample_many(self, generations, logits):
        """`sample` for a batched step: `logits` [rows, vocab] holds each generation's options in turn.

        A class's generations mostly share their settings: their rows get the
        log-probabilities and the candidates (temperature, top-k, top-p) in one go, and
        each generation draws from its own rows with its own generator, as alone (the
        same tokens: every row is computed as it would be by itself). At 30 clients
        sampling one by one took about a quarter of a step. A generation whose choice fails
        fails alone (`Generation.fail`); a group that fails together is chosen again one by one.
        """
        logits = logits.float()
        spans, at = [], 0  # each generation's rows
        for generation in generations:
            spans.append(slice(at, at + len(generation.options)))
            at += len(generation.options)
        chosen, alike = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device), {}
        for generation, rows in zip(generations, spans):
            if self._samples_plainly(generation):
                alike.setdefault(_sampling_key(generation.settings), []).append((generation, rows))
            else:
                self._choose_alone(generation, logits, rows, chosen)
        for members in alike.values():
            try:
                self._choose_together(members, logits, chosen)
            except Exception:  # one member's values broke the group's sampling: each is chosen alone (a member
                # drawn from before the failure draws again: a seeded one then picks what it would not alone)
                for generation, rows in members:
                    self._choose_alone(generation, logits, rows, chosen)
        logprobs, chosen = _logprobs_of(logits, chosen), chosen.tolist()
        return [self._record_choices(generation, chosen[rows], logprobs[rows]) if generation.failure is None
                else [""] * len(generation.options) for generation, rows in zip(generations, spans)]

    def _choose_together(self, members, logits, chosen):
        """Choose the rows of several (generation, rows) of like settings in one go, into `chosen`."""
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

    def _choose_alone(self, generation, logits, rows, chosen):
        """Choose one generation's rows into `chosen`; when that fails, the generation fails alone."""
        try:
            chosen[rows] = self._choose(generation, logits[rows])
        except Exception as error:
            generation.fail(error)

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
