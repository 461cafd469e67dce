"""Who may use the server: the class code and session cookie, the teacher's token, origins and headers."""
import hmac
import secrets
import time
from functools import wraps
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    current_app,
    g,
    jsonify,
    make_response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.sessions import SecureCookieSessionInterface

from .store import digest
from .throttle import SlidingWindow

SESSION_COOKIE = "tabwrite_session"
MAX_NAME_CHARS = 40
FAILED_ATTEMPT_SECONDS = 0.5  # a wrong code or token waits this long: guessing slows, nobody is locked out
MIN_SECRET_CHARS = 32
WEAK_SECRETS = {"secret", "dev", "development", "changeme", "change-me", "password", "default", "tabwrite"}
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}

# No inline script or style, nothing from elsewhere, no framing by other sites. `connect-src
# 'self'` covers the page's own ws:// and wss:// address in current browsers.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; "
                           "frame-ancestors 'self'")

access = Blueprint("access", __name__)


class ConfigError(ValueError):
    """A setting that makes the server unsafe or unusable; start-up stops with its message."""


def check_secret_key(config):
    """The secret key to use: the configured one if strong enough for the host, else a random one."""
    key = config.get("SECRET_KEY") or ""
    if not key:
        return secrets.token_hex(32)  # one per run: the teacher signs in again after a restart
    weak = len(key) < MIN_SECRET_CHARS or key.lower() in WEAK_SECRETS
    if weak and config["HOST"] not in LOOPBACK_HOSTS:
        raise ConfigError(f"SECRET_KEY is too weak to serve {config['HOST']}: use at least {MIN_SECRET_CHARS} random "
                          "characters (python -c 'import secrets; print(secrets.token_hex(32))'), "
                          "or leave it empty for a random key per run")
    return key


class Gatekeeper:
    """The access rules of one app: class code, teacher token, allowed origins and the join throttle."""

    def __init__(self, config, classroom):
        self.classroom = classroom
        self.admin_token = config["ADMIN_TOKEN"]
        self.extra_origins = {o.strip().rstrip("/") for o in config["ALLOWED_ORIGINS"].split(",") if o.strip()}
        # separate buckets: a wrong admin token never locks the class out of joining, nor the other way round
        self.attempts = {"join": SlidingWindow(config["JOIN_ATTEMPTS_PER_MINUTE"]),
                         "admin": SlidingWindow(config["ADMIN_ATTEMPTS_PER_MINUTE"])}
        self.admin_nonce = secrets.token_hex(16)  # part of every dashboard cookie; signing out rotates it
        self.new_sessions = SlidingWindow(config["JOINS_PER_MINUTE"])  # per address: joining again is no reset

    def origin_allowed(self, origin, environ):
        """Same origin as the request's Host (or its proxy's), or one of --allowed-origin."""
        if origin is None:
            return True  # not a browser: nothing for a foreign page to abuse
        own = {f"{environ.get('wsgi.url_scheme', 'http')}://{environ.get('HTTP_HOST', '')}"}
        forwarded_host = environ.get("HTTP_X_FORWARDED_HOST")
        if forwarded_host:
            scheme = environ.get("HTTP_X_FORWARDED_PROTO", "https").split(",")[0].strip()
            own.add(f"{scheme}://{forwarded_host.split(',')[0].strip()}")
        return origin.rstrip("/") in own | self.extra_origins

    def is_admin(self):
        """Whether this request carries the teacher's signed cookie for the current token and sign-in."""
        return hmac.compare_digest(session.get("admin", ""), self.admin_mark())

    def admin_mark(self):
        """What a signed-in dashboard cookie holds: the token's digest with this sign-in's nonce."""
        return digest(f"{self.admin_token}:{self.admin_nonce}")

    def sign_admin_out(self):
        """Every dashboard cookie given so far stops working (a captured one too)."""
        self.admin_nonce = secrets.token_hex(16)

    def new_session_wait(self):
        """Seconds before this address may start another session (0: go ahead, and it is counted)."""
        address = request.remote_addr or "?"
        return 0.0 if self.new_sessions.allow(address) else max(1.0, self.new_sessions.retry_after(address))

    def too_many_attempts(self, kind):
        """Seconds this address must wait before another `kind` ("join" or "admin") is checked (0: go ahead)."""
        return self.attempts[kind].retry_after(request.remote_addr or "?")

    def failed_attempt(self, kind):
        """Count a wrong code or token against this address, and make the wrong guess wait a moment."""
        self.attempts[kind].hit(request.remote_addr or "?")
        time.sleep(FAILED_ATTEMPT_SECONDS)  # cooperative under eventlet: other requests are served meanwhile


class HostCheck:
    """WSGI middleware: a request for a host name not in `allowed` gets 400, Socket.IO's included (DNS rebinding)."""

    def __init__(self, app, allowed):
        self.app = app
        self.allowed = {name.strip().lower().strip("[]") for name in allowed if name.strip()}

    def __call__(self, environ, start_response):
        if host_name(environ.get("HTTP_HOST", "")) in self.allowed:
            return self.app(environ, start_response)
        start_response("400 Bad Request", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"This server does not answer to that host name (see --allowed-host)."]


def host_name(host):
    """The name in a Host header, without its port or an IPv6 address's brackets, in lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host[1:]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def gatekeeper():
    return current_app.extensions["tabwrite.access"]


def set_session_cookie(response, token):
    """The student's cookie: random, HttpOnly, SameSite=Lax, Secure over HTTPS."""
    days = current_app.config["SESSION_DAYS"]
    response.set_cookie(SESSION_COOKIE, token, max_age=days * 24 * 3600, httponly=True, samesite="Lax",
                        secure=request.is_secure)


class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie (the teacher's), marked Secure whenever the page came over HTTPS."""

    def get_cookie_secure(self, app):
        return request.is_secure


def add_security_headers(response):
    """Every response: CSP without inline script, nosniff, no framing by other sites."""
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def refuse_foreign_posts():
    """A form or API call posted from another site's page is refused before any handler runs."""
    if request.method == "POST" and not gatekeeper().origin_allowed(request.headers.get("Origin"), request.environ):
        return make_response(("This request came from another site.", 403))
    return None


class TooManySessions(Exception):
    """This address started JOINS_PER_MINUTE sessions this minute; `wait` seconds until the next."""

    def __init__(self, wait):
        super().__init__(f"Too many new sessions from this address. Wait {wait:.0f} seconds.")
        self.wait = wait


def resolve_session():
    """This visitor's session: from the cookie, else a new guest one in a class without a code.

    Returns (session, new cookie token or None); session is None when the visitor must join first.
    Raises TooManySessions when this address has started too many sessions this minute.
    """
    classroom = gatekeeper().classroom
    found = classroom.session_for(request.cookies.get(SESSION_COOKIE))
    if found is not None or classroom.code:
        return found, None
    wait = gatekeeper().new_session_wait()
    if wait:
        raise TooManySessions(wait)
    token, guest = classroom.guest_session()
    return guest, token


def too_many_sessions_response(error, as_json=False):
    """The 429 answer to TooManySessions, with Retry-After."""
    body = jsonify({"error": str(error)}) if as_json else str(error)
    response = make_response(body, 429)
    response.headers["Retry-After"] = str(int(error.wait) + 1)
    return response


def student_page(view):
    """Serve `view` to a joined student (as `g.session`); send anyone else to /join."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        try:
            g.session, new_token = resolve_session()
        except TooManySessions as error:
            return too_many_sessions_response(error)
        if g.session is None:
            return redirect(url_for("access.join", next=request.path))
        response = make_response(view(*args, **kwargs))
        if new_token:
            set_session_cookie(response, new_token)
        return response

    return wrapper


def admin_only(view):
    """Serve `view` to the teacher only: pages go to the sign-in form, API calls get 401."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        if gatekeeper().is_admin():
            return view(*args, **kwargs)
        if request.path.startswith("/admin/api/"):
            return jsonify({"error": "sign in at /admin first"}), 401
        return redirect(url_for("access.admin_login"))

    return wrapper


def _safe_next(target):
    """Only a path on this site may follow a join (no open redirect)."""
    parts = urlsplit(target or "/")
    return target if target and target.startswith("/") and not parts.netloc and not target.startswith("//") else "/"


def _throttled(kind, template, **context):
    wait = gatekeeper().too_many_attempts(kind)
    if wait <= 0:
        return None
    response = make_response(render_template(template, error=f"Too many tries. Wait {wait:.0f} seconds.",
                                             **context), 429)
    response.headers["Retry-After"] = str(int(wait) + 1)
    return response


@access.route("/join", methods=["GET", "POST"])
def join():
    """The class-code form; a right code and a display name give a session cookie."""
    keeper = gatekeeper()
    target = _safe_next(request.values.get("next"))
    if not keeper.classroom.code:
        return redirect(target)
    if request.method == "GET":
        return render_template("join.html", error=None, name="", next=target)
    name = " ".join(request.form.get("name", "").split())
    refused = _throttled("join", "join.html", name=name, next=target)
    if refused:
        return refused
    if not 1 <= len(name) <= MAX_NAME_CHARS or not name.isprintable():
        return render_template("join.html", error=f"Choose a name of 1 to {MAX_NAME_CHARS} characters.",
                               name=name[:MAX_NAME_CHARS], next=target), 400
    if not hmac.compare_digest(request.form.get("code", "").strip().encode(), keeper.classroom.code.encode()):
        keeper.failed_attempt("join")
        return render_template("join.html", error="That code did not work.", name=name, next=target), 403
    wait = keeper.new_session_wait()
    if wait:
        response = make_response(render_template("join.html", error=str(TooManySessions(wait)), name=name,
                                                 next=target), 429)
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response
    token, _ = keeper.classroom.store.create_session(name, keeper.classroom.code)
    response = redirect(target)
    set_session_cookie(response, token)
    return response


@access.post("/leave")
def leave():
    """Forget this browser's session."""
    response = redirect(url_for("access.join"))
    response.delete_cookie(SESSION_COOKIE)
    return response


@access.route("/admin/login", methods=["GET", "POST"])
def admin_login():
    """The teacher's sign-in with the admin token printed at start-up."""
    keeper = gatekeeper()
    if request.method == "GET":
        return render_template("admin_login.html", error=None)
    refused = _throttled("admin", "admin_login.html")
    if refused:
        return refused
    if not hmac.compare_digest(request.form.get("token", "").strip().encode(), keeper.admin_token.encode()):
        keeper.failed_attempt("admin")
        return render_template("admin_login.html", error="That token did not work."), 403
    session["admin"] = keeper.admin_mark()
    return redirect(url_for("admin.dashboard"))


@access.post("/admin/logout")
def admin_logout():
    """End the teacher's sign-in, on every device: the nonce in the dashboard cookies changes."""
    if gatekeeper().is_admin():  # a stranger's post cannot sign the teacher out
        gatekeeper().sign_admin_out()
    session.pop("admin", None)
    return redirect(url_for("access.admin_login"))
