"""Every server setting in one table: name, default and help text.

Configuration flows one way: these defaults, then `TABWRITE_<NAME>` environment
variables, then command-line flags, then the mapping given to `create_app`.
"""
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Setting:
    """One configuration entry as documented in the README."""

    name: str
    default: object
    help: str


SETTINGS = (
    Setting("MODEL", "auto", "Model to serve: auto, embedded, a Hugging Face id, or a local directory."),
    Setting("DEVICE", "auto", "auto (GPU when available), cpu, cuda, cuda:N or mps."),
    Setting("DTYPE", "auto", "auto (float32 on CPU, float16 on GPU), float32, float16 or bfloat16."),
    Setting("HOST", "127.0.0.1", "Address to listen on; 0.0.0.0 serves the whole network."),
    Setting("PORT", 5000, "Port to listen on."),
    Setting("ASYNC_MODE", "eventlet", "Flask-SocketIO async mode: eventlet (served) or threading (tests)."),
    Setting("MAX_TEXT_CHARS", 20000, "Longest document text accepted in one request, in characters."),
    Setting("MAX_QUEUE", 64, "Requests waiting or running at once; more get a `busy` error."),
    Setting("MAX_CONTEXT", 1024,
            "Most tokens the model sees (prompt plus options), capped at the model's own window."),
    Setting("KV_CACHE_MB", 1024,
            "Memory kept for finished option sets so that repeat TAB continues without re-reading."),
    Setting("KEEP_SETS", 8, "Finished option sets remembered per client, so an older set can still be extended."),
    Setting("CACHE_DIR", "", "Where the converted embedded model is kept (default ~/.cache/tabwrite)."),
    Setting("SECRET_KEY", "", "Flask secret key; a random one per run when empty."),
)

DEFAULTS = {s.name: s.default for s in SETTINGS}


def from_env(environ=None):
    """Return the settings found in `TABWRITE_*` environment variables, typed like their defaults."""
    environ = os.environ if environ is None else environ
    found = {}
    for setting in SETTINGS:
        raw = environ.get(f"TABWRITE_{setting.name}")
        if raw is not None:
            found[setting.name] = type(setting.default)(raw)
    return found


def cache_dir(config):
    """Return the folder for converted models, creating nothing."""
    if config.get("CACHE_DIR"):
        return Path(config["CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tabwrite"
