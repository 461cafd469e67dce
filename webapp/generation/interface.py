"""The engine's face: what the scheduler (serving/scheduler.py) may ask of an engine, and nothing more.

`engine.Engine` runs a model in this process. A second engine (one that speaks to a
serving engine over HTTP) implements the same methods; the scheduler cannot tell them
apart. Calls come one at a time: those that do model work (start_many, step_many, prime,
score, score_ahead, next_token_logits, distribution, warm_up) on the scheduler's model
thread, the rest (prepare, unread, extend, cancel, release, flush) on its loop, so they
must be quick. Text goes out as deltas: one string per option, "" where an option has
nothing new.

What the scheduler reads of a generation: `settings`, `options` (each `step_tokens`),
`finished`, `failure` (set when it failed alone), `texts()`, `finishes()`,
`likelihoods()`, `prompt_ids`, `truncated`, `healed`, `reused`, `prefix` (the tab's new
prompt cache, to keep) and `cache_bytes()`; of a prefix or scored state, `cache_bytes()`.
"""
from typing import Protocol


class Engine(Protocol):
    """Prepare, start, step, extend, cancel and release requests; score texts; show the next token's distribution."""

    loaded: object  # the served model's description: name, device, dtype, max_context, parameters, warning

    def prepare(self, text, settings):
        """A request ready to start (tokenized, fitted to the window, token healing applied); no model work.

        Returns the request's Generation (its `settings`, `options`, `finished`, `texts()`,
        `finishes()`, `likelihoods()`, `truncated`, `healed`), which every later call takes.
        """

    def unread(self, generation, prefix=None):
        """How many tokens `start_many` would read for a prepared request, given its tab's `prefix`; no model work."""

    def start_many(self, requests):
        """Per (prepared generation, prefix): read its prompt and write its first tokens; (generation, deltas) each.

        `prefix` (the tab's last prompt cache, or None) is used up; the new one is left in
        `generation.prefix` for the caller to keep.
        """

    def step_many(self, generations, joining=0):
        """One more token for every live option of every generation, together; deltas per generation.

        `joining`: requests about to join the batch (a hint for sizing memory).
        """

    def flush(self, generation):
        """Text the options held back (an incomplete character) and can now give, once they have ended; deltas."""

    def extend(self, generation, overrides=None):
        """Begin another step on every option that can go on (settings `overrides` applied); `step_many` writes it."""

    def cancel(self, generation):
        """Stop every option where it is; it can still be extended later."""

    def release(self, generation):
        """Let go of a finished generation's cache (memory); extending it later reads it again."""

    def prime(self, text, settings, prefix=None):
        """Read ahead some of the prompt `text` would give, while nobody waits; (prefix or None, all read)."""

    def score(self, text, previous=None):
        """Each token's log-probability, rank and likeliest alternatives, and the perplexity; (scores, kept state)."""

    def score_ahead(self, text, previous=None):
        """Score one bounded part more of a long text (kept state to pass on), or None when `score` can finish it."""

    def next_token_logits(self, text, prefix=None):
        """The model's logits for the token after `text`, and `text`'s prefix for later reuse."""

    def distribution(self, logits, settings):
        """The likeliest next tokens, as the model and as sampling with `settings` weigh them (a JSON-ready dict)."""

    def warm_up(self):
        """Run one tiny request so the first real one does not pay for lazy initialisation."""
