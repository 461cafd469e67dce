"""The scheduler's idle-time work: reading a tab's text ahead of its Tab, scoring it, the next-token chart.

It runs only while no suggest or extend waits (Scheduler._turn), a bounded piece a turn, so that a Tab
waits for one piece at most. Each call that fails tells its tab alone.
"""
import logging

from ..web import protocol
from ..web.protocol import ProtocolError

log = logging.getLogger(__name__)

FAILED = object()  # what an idle-time call that failed (and said so) returns, where None is an answer


class IdleWork:
    """Part of Scheduler (its state is the scheduler's: primes, scores, scored, distributions, prefixes)."""

    def _prime_one(self):
        """Read one chunk of the longest-waiting tab's text; it goes back in line until all is read."""
        sid, request = self.primes.popitem(last=False)
        prefix = self.prefixes.pop(sid, None)
        try:
            prefix, complete = self.runner.run_blocking(self.engine.prime, request.text, request.settings, prefix)
        except Exception:  # priming is a courtesy: the TAB will read the text itself
            log.exception("priming failed for %s", request.id)
            return
        if prefix is not None:
            self._keep_prefix(sid, prefix)
        if complete:
            self.emit(protocol.PRIMED, protocol.primed_payload(request.id, len(prefix.ids) if prefix else 0), to=sid)
        else:
            self.primes.setdefault(sid, request)  # unless a newer text for this tab came in meanwhile

    def _score_one(self):
        """Answer the longest-waiting `score`."""
        sid, request = self.scores.popitem(last=False)
        previous = self.scored.pop(sid, None)
        ahead = self._idle_call(sid, request, "scoring", self.engine.score_ahead, request.text, previous,
                                failed=FAILED)
        if ahead is FAILED:
            return
        if ahead is not None:  # a long text is scored a pass at a time: a Tab waits for one pass at most
            self.scored[sid] = ahead
            self._within_prefix_budget()
            self.scores.setdefault(sid, request)  # unless a newer text for this tab came in meanwhile
            return
        answer = self._idle_call(sid, request, "scoring", self.engine.score, request.text, previous)
        if answer is None:
            return
        scores, scored = answer
        if scored is not None:
            self.scored[sid] = scored
            self._within_prefix_budget()
        self.emit(protocol.SCORE, protocol.score_payload(request.id, scores), to=sid)

    def _distribution(self, sid, request):
        """Reshape the tab's last logits when the text is the same; otherwise wait for the model to read it."""
        text, logits = self.next_logits.get(sid, (None, None))
        if text != request.text:
            replace_at_back(self.distributions, sid, request)
            return
        self.distributions.pop(sid, None)
        answer = self._idle_call(sid, request, "drawing the chart", self.engine.distribution, logits, request.settings)
        if answer is None:
            return
        self.emit(protocol.DISTRIBUTION, protocol.distribution_payload(request.id, answer), to=sid)

    def _distribution_one(self):
        """Read the text of the longest-waiting distribution request (from the tab's prompt cache), then answer."""
        sid, request = self.distributions.popitem(last=False)
        answer = self._idle_call(sid, request, "reading the text", self.engine.next_token_logits, request.text,
                                 self.prefixes.pop(sid, None))
        if answer is None:
            return
        logits, prefix = answer
        self._keep_prefix(sid, prefix)
        self.next_logits[sid] = (request.text, logits)
        self._distribution(sid, request)

    def _idle_call(self, sid, request, doing, call, *args, failed=None):
        """Run an idle-time model call for `request`; when it fails, log it, tell the tab, and return `failed`."""
        try:
            return self.runner.run_blocking(call, *args)
        except Exception:
            log.exception("%s failed for %s", doing, request.id)
            error = ProtocolError(f"the model failed while {doing}; please try again", code=protocol.INTERNAL)
            self.emit(protocol.ERROR, protocol.error_payload(request.id, error), to=sid)
            return failed

    def _keep_prefix(self, sid, prefix):
        """Keep the tab's newest prompt cache for its next TAB; forget the least recently used over the budget."""
        self.prefixes[sid] = prefix
        self._within_prefix_budget()

    def _within_prefix_budget(self):
        """Forget the least recently used scored texts, then prompt caches, until both fit PREFIX_CACHE_MB."""
        total = sum(kept.cache_bytes() for kept in [*self.prefixes.values(), *self.scored.values()])
        for kept in (self.scored, self.prefixes):  # a Tab's prompt cache matters more than a perplexity's
            while total > self.prefix_budget_bytes and kept:
                _, oldest = kept.popitem(last=False)
                total -= oldest.cache_bytes()


def replace_at_back(pending, sid, request):
    """The tab's newest idle-time request replaces its older one and waits at the back of the line."""
    pending.pop(sid, None)
    pending[sid] = request
