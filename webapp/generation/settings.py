"""How options are written: the sampling settings, their ranges and the decoding modes.

Plain data (no torch): the web front validates payloads into these (web/protocol.py), the engine reads them.
"""
from dataclasses import dataclass

# Where a step may end early, besides its length.
STOP_AT = ("length", "sentence", "paragraph")
# How options are chosen: sampling (temperature, top-k, top-p), always the likeliest token, or beam search.
SAMPLE, GREEDY, BEAM = "sample", "greedy", "beam"
MODES = (SAMPLE, GREEDY, BEAM)
# The least temperature that samples; 0 means greedy. Below it the logits' division can overflow to infinity (a
# request with 1e-40 failed every request stepped with it), and it already puts all the probability on one token.
TEMPERATURE_FLOOR = 0.01


@dataclass(frozen=True)
class Range:
    """Inclusive bounds of a numeric setting, used for checking and for messages."""

    low: float
    high: float
    kind: type

    def describe(self):
        """Say the allowed range in words, e.g. 'an integer from 1 to 5'."""
        noun = "an integer" if self.kind is int else "a number"
        return f"{noun} from {self.low} to {self.high}"


@dataclass(frozen=True)
class SamplingSettings:
    """How options are sampled; every field is optional in a request."""

    n: int = 3  # options per TAB, 1..5
    temperature: float = 0.8  # 1.0 = model's distribution, < 1 = safer, > 1 = wilder, 0 = greedy, else >= 0.01
    top_k: int = 40  # sample only among the k likeliest tokens, 0 = no limit
    top_p: float = 0.95  # nucleus: smallest set of tokens whose probability reaches p, 1.0 = off
    length: int = 12  # new tokens per TAB (one "step"); repeat TAB adds another step
    max_time: float = 10.0  # seconds of writing per step (after reading the prompt); a safety cap
    stop_at: str = "sentence"  # end a step early at: "sentence", "paragraph", or only "length"
    seed: int | None = None  # fixed seed -> the same options for the same text and settings
    mode: str = SAMPLE  # "sample", "greedy" (the likeliest token every time) or "beam" (beam search)
    beams: int = 4  # beam search: sequences kept at each step; the n best are the options (n <= beams)
    no_repeat_ngram: int = 0  # never repeat a word sequence of this many tokens; 0 = off
    model: str | None = None  # which served model writes (its name in `status.models`); None = the default


RANGES = {
    "n": Range(1, 5, int),
    "temperature": Range(0.0, 2.0, float),
    "top_k": Range(0, 1000, int),
    "top_p": Range(0.01, 1.0, float),
    "length": Range(1, 64, int),
    "max_time": Range(0.1, 30.0, float),
    "beams": Range(2, 8, int),
    "no_repeat_ngram": Range(0, 6, int),
}
SEED_RANGE = Range(0, 2**32 - 1, int)
