"""Class-wide sampling settings: the teacher's defaults and locks, and the caps every request obeys."""
import dataclasses
from dataclasses import dataclass, field

from ..generation.settings import SamplingSettings
from ..web.protocol import ProtocolError, parse_settings

# Settings the teacher may set for the class and lock; a locked seed gives the whole class the same options.
LOCKABLE = ("n", "temperature", "top_k", "top_p", "length", "stop_at", "mode", "beams", "seed")


@dataclass(frozen=True)
class ClassPolicy:
    """What the teacher chose: default values, which of them are locked, and the size caps."""

    defaults: dict = field(default_factory=dict)  # name -> value, only LOCKABLE names
    locked: frozenset = frozenset()
    max_options: int = 5
    max_length: int = 64

    @classmethod
    def from_payload(cls, payload, max_options, max_length):
        """Validate the dashboard's {defaults, locked}; caps come from the server's configuration."""
        if not isinstance(payload, dict):
            raise ProtocolError("class settings must be an object")
        defaults = payload.get("defaults") or {}
        locked = payload.get("locked") or []
        if not isinstance(defaults, dict) or not isinstance(locked, list):
            raise ProtocolError("defaults must be an object and locked a list of setting names")
        unknown = sorted({str(name) for name in [*defaults, *locked]} - set(LOCKABLE))
        if unknown:
            raise ProtocolError(f"{unknown[0]!r} cannot be set for the class; these can: {', '.join(LOCKABLE)}",
                                unknown[0])
        missing = sorted(set(locked) - set(defaults))
        if missing:
            raise ProtocolError(f"a locked setting needs a value: {missing[0]}", missing[0])
        typed = parse_settings(defaults)
        policy = cls({name: getattr(typed, name) for name in defaults}, frozenset(locked), max_options, max_length)
        policy.check_caps(policy.base())
        return policy

    def to_payload(self):
        """The shape of the `policy` event and of the dashboard's form."""
        return {"defaults": dict(self.defaults), "locked": sorted(self.locked),
                "caps": {"n": self.max_options, "length": self.max_length}}

    def base(self):
        """The settings a request starts from: the server's defaults within the caps, the teacher's over them."""
        server = SamplingSettings()
        within_caps = {"n": min(server.n, self.max_options), "length": min(server.length, self.max_length)}
        return dataclasses.replace(server, **{**within_caps, **self.defaults})

    def apply(self, settings):
        """A student's settings with the locked ones replaced by the class's; refuse sizes over the caps."""
        settings = dataclasses.replace(settings, **{name: self.defaults[name] for name in self.locked})
        self.check_caps(settings)
        return settings

    def apply_overrides(self, overrides):
        """An extend's setting overrides, with locked settings left at the class's values."""
        kept = {name: value for name, value in overrides.items() if name not in self.locked}
        if kept.get("length", 0) > self.max_length:
            raise _over_cap("length", self.max_length)
        return kept

    def check_caps(self, settings):
        """Raise a ProtocolError naming the setting that asks for more than the class allows."""
        if settings.n > self.max_options:
            raise _over_cap("n", self.max_options)
        if settings.length > self.max_length:
            raise _over_cap("length", self.max_length)


def _over_cap(name, cap):
    return ProtocolError(f"settings.{name} must be at most {cap} on this server", f"settings.{name}")
