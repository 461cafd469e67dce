"""Socket.IO event names and payload shapes, each with one validating constructor.

Every event the server takes or sends is named here and listed in the README; a
test fails when the two drift apart.
"""
import dataclasses
from dataclasses import dataclass, field, fields

from ..generation.settings import (
    BEAM,
    GREEDY,
    MODES,
    RANGES,
    SAMPLE,
    SEED_RANGE,
    STOP_AT,
    TEMPERATURE_FLOOR,
    SamplingSettings,
)

# Client -> server
SUGGEST = "suggest"
EXTEND = "extend"
CANCEL = "cancel"
PRIME = "prime"
SCORE = "score"  # both ways: the client asks with {id, text}, the server answers with the scores
DISTRIBUTION = "distribution"  # both ways: {id, text, settings} -> the next token's probabilities, reshaped
# Server -> client
DELTA = "delta"
DONE = "done"
ERROR = "error"
STATUS = "status"
POLICY = "policy"
PRIMED = "primed"
QUEUED = "queued"

CLIENT_EVENTS = (SUGGEST, EXTEND, CANCEL, PRIME, SCORE, DISTRIBUTION)
SERVER_EVENTS = (DELTA, DONE, ERROR, STATUS, POLICY, PRIMED, QUEUED, SCORE, DISTRIBUTION)

# Why an option stopped, as sent in `done.finish`.
FINISH_REASONS = ("length", "sentence", "paragraph", "eos", "time", "context", "cancelled")
# What the page and the dashboard call each choice.
CHOICES = {
    "stop_at": (("sentence", "end of a sentence"), ("paragraph", "end of a paragraph"), ("length", "only the length")),
    "mode": ((SAMPLE, "sampling"), (GREEDY, "greedy: always the likeliest token"), (BEAM, "beam search")),
}

# Error codes sent in `error.code`.
INVALID = "invalid"  # the payload broke a rule; `field` names which
BUSY = "busy"  # the server's queue is full; try again after `retry_after` seconds
RATE_LIMITED = "rate_limited"  # this student sent too many requests this minute
SIGNED_OUT = "signed_out"  # the teacher ended this student's session
UNKNOWN_PARENT = "unknown_parent"  # extend named a set the server no longer has
INTERNAL = "internal"  # the model failed; the connection stays up

MAX_ID_CHARS = 64
MAX_MODEL_CHARS = 200


class ProtocolError(ValueError):
    """A payload that breaks a rule; carries the offending field for the `error` event."""

    def __init__(self, message, field=None, code=INVALID, retry_after=None):
        super().__init__(message)
        self.field = field
        self.code = code
        self.retry_after = retry_after  # seconds, for `busy` and `rate_limited`


def parse_settings(payload, base=None):
    """SamplingSettings from a client dict over `base` (the defaults), naming the field and range of any bad value."""
    base = base or SamplingSettings()
    if payload is None:
        return base
    if not isinstance(payload, dict):
        raise ProtocolError("settings must be an object", "settings")
    known = {f.name for f in fields(SamplingSettings)}
    unknown = sorted(set(payload) - known)
    if unknown:
        raise ProtocolError(f"unknown setting {unknown[0]!r}; known: {', '.join(sorted(known))}",
                            f"settings.{unknown[0]}")
    values = {}
    for name, value in payload.items():
        if name == "stop_at":
            values[name] = _check_choice(value, STOP_AT, "settings.stop_at")
        elif name == "mode":
            values[name] = _check_choice(value, MODES, "settings.mode")
        elif name == "model":
            values[name] = _check_model(value, "settings.model")
        elif name == "seed":
            values[name] = None if value is None else _check_number(value, SEED_RANGE, "settings.seed")
        else:
            values[name] = _check_number(value, RANGES[name], f"settings.{name}")
    if 0 < values.get("temperature", 1) < TEMPERATURE_FLOOR:
        raise ProtocolError(f"settings.temperature must be 0 (greedy) or from {TEMPERATURE_FLOOR} to "
                            f"{RANGES['temperature'].high} (got {values['temperature']})", "settings.temperature")
    settings = dataclasses.replace(base, **values)
    if settings.mode == BEAM and settings.n > settings.beams:
        raise ProtocolError(f"beam search shows at most its {settings.beams} beams: n must be at most beams",
                            "settings.n")
    return settings


@dataclass(frozen=True)
class SuggestRequest:
    """`suggest {id, text, settings}`: sample options that continue `text`."""

    id: str
    text: str
    settings: SamplingSettings = field(default_factory=SamplingSettings)

    @classmethod
    def from_payload(cls, payload, max_text_chars, base=None):
        """Validate a `suggest` payload; settings it leaves out come from `base` (the class's defaults)."""
        payload = _check_object(payload)
        text = _check_text(payload, max_text_chars)
        settings = payload.get("settings") or {}
        if "n" in payload and isinstance(settings, dict):  # `n` may sit beside the settings, as in the design
            settings = {"n": payload["n"], **settings}
        return cls(id=_check_id(payload), text=text, settings=parse_settings(settings, base))


@dataclass(frozen=True)
class ExtendRequest:
    """`extend {id, parent, settings}`: make every option of request `parent` one step longer."""

    id: str
    parent: str
    settings: dict = field(default_factory=dict)

    @classmethod
    def from_payload(cls, payload):
        """Validate an `extend` payload; its settings override the parent's (n excepted)."""
        payload = _check_object(payload)
        parent = payload.get("parent")
        if not isinstance(parent, (str, int)) or isinstance(parent, bool):
            raise ProtocolError("parent must be the id of an earlier suggest", "parent")
        overrides = payload.get("settings") or {}
        typed = parse_settings(overrides)
        if "n" in overrides:
            raise ProtocolError("extend keeps the parent's number of options; n cannot change", "settings.n")
        if "mode" in overrides:
            raise ProtocolError("extend keeps the parent's decoding mode; mode cannot change", "settings.mode")
        return cls(id=_check_id(payload), parent=str(parent),
                   settings={name: getattr(typed, name) for name in overrides})


@dataclass(frozen=True)
class PrimeRequest(SuggestRequest):
    """`prime {id, text, settings}`: read `text` ahead of a TAB, while the writer pauses (the rules of `suggest`)."""


@dataclass(frozen=True)
class ScoreRequest:
    """`score {id, text, model?}`: how likely a model finds `text` (the page sends the whole document)."""

    id: str
    text: str
    model: str | None = None

    @classmethod
    def from_payload(cls, payload, max_text_chars):
        """Validate a `score` payload: an id, a text within the size limit, and optionally a model's name."""
        text = _check_text(_check_object(payload), max_text_chars)
        return cls(id=_check_id(payload), text=text, model=_check_model(payload.get("model"), "model"))


@dataclass(frozen=True)
class DistributionRequest(SuggestRequest):
    """`distribution {id, text, settings}`: the likeliest next tokens after `text`, before and after the settings."""


@dataclass(frozen=True)
class CancelRequest:
    """`cancel {id}`: stop a request that is still running."""

    id: str

    @classmethod
    def from_payload(cls, payload):
        """Validate a `cancel` payload."""
        return cls(id=_check_id(_check_object(payload)))


def delta_payload(request_id, deltas):
    """`delta`: new text per option since the last event, in option order."""
    return {"id": request_id, "deltas": deltas}


def done_payload(request_id, options, finish, stats, likelihoods=()):
    """`done`: the whole text of every option, why each stopped, how likely the model found it, and timings."""
    return {"id": request_id, "options": options, "finish": finish, "likelihood": list(likelihoods), "stats": stats}


def queued_payload(request_id, position):
    """`queued`: the request waits for the model, `position` new requests first in line (1: it is next)."""
    return {"id": request_id, "position": position}


def primed_payload(request_id, tokens):
    """`primed`: the text of prime `request_id` is read, `tokens` of it kept for the next TAB."""
    return {"id": request_id, "tokens": tokens}


def score_payload(request_id, scores):
    """`score`: per-token log-probabilities and the perplexity of the scored text."""
    return {"id": request_id, **scores}


def distribution_payload(request_id, distribution):
    """`distribution`: the next token's likeliest candidates, their probabilities as the model gives and as sampled."""
    return {"id": request_id, **distribution}


def error_payload(request_id, error):
    """Shape a ProtocolError as the `error` event's payload."""
    payload = {"id": request_id, "code": error.code, "message": str(error), "field": error.field}
    if error.retry_after is not None:
        payload["retry_after"] = round(error.retry_after, 1)
    return payload


def request_id_of(payload):
    """Best-effort id of a payload for error replies, even when the payload is bad."""
    if isinstance(payload, dict) and isinstance(payload.get("id"), (str, int)):
        return str(payload["id"])[:MAX_ID_CHARS]
    return None


def _check_text(payload, max_text_chars):
    text = payload.get("text")
    if not isinstance(text, str):
        raise ProtocolError("text must be a string", "text")
    if len(text) > max_text_chars:
        raise ProtocolError(f"text must be at most {max_text_chars} characters (got {len(text)})", "text")
    if not _is_valid_unicode(text):
        raise ProtocolError("text must be valid Unicode (it holds half of a surrogate pair)", "text")
    return text


def _is_valid_unicode(text):
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, e.g. half an emoji cut by a client
        return False
    return True


def _check_object(payload):
    if not isinstance(payload, dict):
        raise ProtocolError("payload must be an object", None)
    return payload


def _check_id(payload):
    value = payload.get("id")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ProtocolError("id must be a string or an integer chosen by the client", "id")
    value = str(value)
    if not 1 <= len(value) <= MAX_ID_CHARS:
        raise ProtocolError(f"id must be 1 to {MAX_ID_CHARS} characters", "id")
    return value


def _check_number(value, allowed, name):
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if allowed.kind is int and is_number and float(value).is_integer():
        value = int(value)
    elif allowed.kind is int or not is_number:
        raise ProtocolError(f"{name} must be {allowed.describe()}", name)
    if not allowed.low <= value <= allowed.high:  # also rejects NaN
        raise ProtocolError(f"{name} must be {allowed.describe()} (got {value})", name)
    return allowed.kind(value)


def _check_model(value, name):
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_MODEL_CHARS:
        raise ProtocolError(f"{name} must be the name of a served model (see status.models)", name)
    return value


def _check_choice(value, choices, name):
    if value not in choices:
        raise ProtocolError(f"{name} must be one of {', '.join(choices)}", name)
    return value
