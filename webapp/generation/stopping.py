"""Decide when an option's current step ends."""
import re
from dataclasses import dataclass

# A sentence ends in . ! ? (or an ellipsis), perhaps followed by closing quotes or brackets.
SENTENCE_END = re.compile(r"[.!?\u2026\u3002\uff01\uff1f][\"'\u201d\u2019)\]]*\s*$")
PARAGRAPH_END = re.compile(r"\n\s*$")
WORDLIKE = re.compile(r"\w")  # a lone "." right after the caret does not end a sentence


@dataclass
class StepStop:
    """Stopping rules for one step of one option: length, time, end of text, punctuation."""

    length: int
    deadline: float
    stop_at: str
    eos_ids: frozenset

    def reason(self, token_id, step_tokens, step_text, now, at_context_limit=False):
        """Return why the step ends after this token, or None to go on."""
        if token_id in self.eos_ids:
            return "eos"
        if at_context_limit:
            return "context"
        if self.stop_at != "length" and WORDLIKE.search(step_text):
            if PARAGRAPH_END.search(step_text):
                return "paragraph"
            if self.stop_at == "sentence" and SENTENCE_END.search(step_text):
                return "sentence"
        if step_tokens >= self.length:
            return "length"
        if now >= self.deadline:
            return "time"
        return None
