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
    Setting("MODEL", "auto",
            "Model to serve: auto, embedded, a Hugging Face id, or a local directory; several, comma-separated "
            "(the first is the default)."),
    Setting("MODELS_MEMORY_MB", 0,
            "Memory the served models' weights may take together; a model that does not fit is not loaded "
            "(0: no limit)."),
    Setting("DEVICE", "auto", "auto (GPU when available), cpu, cuda, cuda:N or mps."),
    Setting("DTYPE", "auto",
            "auto (bfloat16 on GPUs and on CPUs with AMX/AVX-512-BF16, int4 there for the embedded model, "
            "else float32), float32, bfloat16, float16, int8 or int4 (CPU only)."),
    Setting("HOST", "127.0.0.1", "Address to listen on; 0.0.0.0 serves the whole network."),
    Setting("PORT", 5000, "Port to listen on."),
    Setting("ASYNC_MODE", "eventlet", "Flask-SocketIO async mode: eventlet (served) or threading (tests)."),
    Setting("MAX_CONTEXT", 1024,
            "Most tokens the model sees (prompt plus options), capped at the model's own window."),
    Setting("KV_CACHE_MB", 1024,
            "Memory kept for finished option sets so that repeat TAB continues without re-reading."),
    Setting("PREFIX_CACHE_MB", 512,
            "Memory kept for each tab's last prompt, so the next TAB on a growing document reads only what is new."),
    Setting("KEEP_SETS", 8, "Finished option sets remembered per client, so an older set can still be extended."),
    Setting("CACHE_DIR", "", "Where the converted embedded model is kept (default ~/.cache/tabwrite)."),
    Setting("ACCESS_CODE", "", "Class code students enter once to join; empty lets anyone who reaches the server in."),
    Setting("ADMIN_TOKEN", "", "Token for the teacher's dashboard at /admin; a random one per run when empty."),
    Setting("ALLOWED_ORIGINS", "",
            "Comma-separated origins allowed to connect besides the page's own (e.g. https://proxy.school)."),
    Setting("ALLOWED_HOSTS", "",
            "Comma-separated host names the server answers to (others get 400: no DNS rebinding); the command "
            "line uses localhost names when serving a loopback address; empty in create_app: any."),
    Setting("TRUSTED_PROXIES", 0,
            "Reverse proxies in front of the server whose X-Forwarded-For, -Proto and -Host to believe (0: none)."),
    Setting("DATABASE", "",
            "SQLite file for sessions, published documents and class settings (default ~/.local/share/tabwrite)."),
    Setting("SECRET_KEY", "",
            "Signs the teacher's cookie; a random one per run when empty. At least 32 characters beyond localhost."),
)

# Fairness: what one student (one session, not one IP address) may ask of the model.
LIMITS = (
    Setting("MAX_QUEUE", 64,
            "Suggest and extend requests waiting or running at once, class-wide; more get a `busy` error "
            "(cancels, priming, scores and charts never count)."),
    Setting("REQUESTS_PER_MINUTE", 40, "Suggest and extend requests one student may send in any 60 seconds."),
    Setting("MAX_TEXT_CHARS", 20000, "Longest document text accepted in one request, in characters."),
    Setting("MAX_OPTIONS", 5, "Most options one TAB may ask for (1 to 5)."),
    Setting("MAX_LENGTH", 64, "Most new tokens one TAB may ask for (1 to 64)."),
    Setting("MAX_MESSAGE_BYTES", 65536, "Largest Socket.IO message accepted; a bigger one disconnects its sender."),
    Setting("JOIN_ATTEMPTS_PER_MINUTE", 30,
            "Wrong class codes one address may try per minute before getting 429 (a school shares one address; "
            "each wrong code also waits a moment)."),
    Setting("ADMIN_ATTEMPTS_PER_MINUTE", 5,
            "Wrong admin tokens one address may try per minute before getting 429; never counts against joining."),
    Setting("CONTROL_EVENTS_PER_MINUTE", 600,
            "Cancel, prime, score and chart events one student (all tabs together) may send in any 60 seconds; "
            "more get `rate_limited`."),
    Setting("MAX_CONNECTIONS_PER_STUDENT", 12, "Open connections (tabs) one student may have; more are refused."),
    Setting("MAX_CONNECTIONS_PER_ADDRESS", 200,
            "Open connections from one address (a school's shared one counts every student); more are refused."),
    Setting("JOINS_PER_MINUTE", 60,
            "New sessions (joins with the right code, or guests of a class without one) one address may start "
            "per minute."),
    Setting("SESSION_DAYS", 30, "Days a student's session lasts before the code must be entered again."),
    Setting("PUBLISH_MAX_CHARS", 50000, "Longest document a student may publish as a read-only link."),
    Setting("PUBLISHED_PER_STUDENT", 50, "Documents one student may publish."),
    Setting("PUBLISHED_PER_CLASS", 2000,
            "Documents the whole class may publish (each at most PUBLISH_MAX_CHARS), so the file's size is bounded."),
)

DEFAULTS = {s.name: s.default for s in SETTINGS + LIMITS}


def from_env(environ=None):
    """Return the settings found in `TABWRITE_*` environment variables, typed like their defaults."""
    environ = os.environ if environ is None else environ
    found = {}
    for setting in SETTINGS + LIMITS:
        raw = environ.get(f"TABWRITE_{setting.name}")
        if raw is not None:
            found[setting.name] = type(setting.default)(raw)
    return found


def model_names(config):
    """The MODEL setting as a list: one entry per model to serve, the default first."""
    return [name.strip() for name in str(config["MODEL"]).split(",") if name.strip()]


def cache_dir(config):
    """Return the folder for converted models, creating nothing."""
    if config.get("CACHE_DIR"):
        return Path(config["CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tabwrite"


def data_dir(config):
    """Return the folder for the database file, creating nothing."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "tabwrite"


def database_path(config):
    """Return the SQLite file: the DATABASE setting, or tabwrite.sqlite3 in the data folder."""
    return Path(config["DATABASE"]) if config.get("DATABASE") else data_dir(config) / "tabwrite.sqlite3"
