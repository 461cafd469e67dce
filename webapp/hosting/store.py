"""The SQLite file that outlives a restart: student sessions, published documents, class settings.

Each call opens its own short connection: calls are rare (a join, a publish, a page
load) and this keeps the store safe from any thread or green thread without a lock.
"""
import hashlib
import json
import secrets
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY,   -- sha256 of the cookie value; the value itself is never stored
    student_id TEXT NOT NULL,
    name TEXT NOT NULL,
    code_hash TEXT NOT NULL,       -- the class code it was made with; a new code ends old sessions
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS documents (
    id TEXT PRIMARY KEY,
    student_id TEXT NOT NULL,
    author TEXT NOT NULL,
    text TEXT NOT NULL,
    model TEXT NOT NULL,
    settings TEXT NOT NULL,        -- JSON
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS class_settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL            -- JSON
);
"""


@dataclass(frozen=True)
class Session:
    """A joined student, as read back from the cookie."""

    student_id: str
    name: str


@dataclass(frozen=True)
class Document:
    """A published, read-only document."""

    id: str
    student_id: str
    author: str
    text: str
    model: str
    settings: dict
    created: float


def digest(value):
    """A hex sha256 of `value`, for tokens and codes that must not be stored as they are."""
    return hashlib.sha256(value.encode()).hexdigest()


GUEST_NAME = "guest"  # a visitor of a class without a code
GUEST_PREFIX = "guest-"  # a guest session's student id starts so (a student may call themself "guest")
GUEST_SESSION_DAYS = 1  # a guest's session is forgotten sooner: anyone who loads the page gets one
DAY_SECONDS = 24 * 3600


class Store:
    """Reads and writes the database file at `path`, creating it on first use."""

    def __init__(self, path, session_days=30):
        """`session_days`: how long a joined student's session lasts (guests' last GUEST_SESSION_DAYS)."""
        self.path = Path(path)
        self.session_days = session_days
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")  # readers do not wait for a writer
            db.executescript(SCHEMA)

    def _connect(self):
        return closing(sqlite3.connect(self.path, timeout=10, isolation_level=None))

    # ---- sessions ----------------------------------------------------------------------

    def create_session(self, name, code, guest=False):
        """Make a session for `name` (a guest's lasts GUEST_SESSION_DAYS); return (cookie token, Session)."""
        token = secrets.token_urlsafe(32)
        session = Session(student_id=(GUEST_PREFIX if guest else "") + secrets.token_hex(8), name=name)
        with self._connect() as db:
            self._prune_sessions(db)
            db.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?)",
                       (digest(token), session.student_id, name, digest(code), time.time()))
        return token, session

    def find_session(self, token, code):
        """The session behind a cookie token, if it was made with the current class code."""
        if not token:
            return None
        with self._connect() as db:
            row = db.execute("SELECT student_id, name, created FROM sessions WHERE token_hash = ? AND code_hash = ?",
                             (digest(token), digest(code))).fetchone()
        if row is None or row[2] < time.time() - self._lifetime(row[0]):
            return None  # unknown, or expired (pruned at the next join)
        return Session(row[0], row[1])

    def _lifetime(self, student_id):
        """Seconds the session of `student_id` lasts."""
        return (GUEST_SESSION_DAYS if student_id.startswith(GUEST_PREFIX) else self.session_days) * DAY_SECONDS

    def _prune_sessions(self, db):
        """Forget expired sessions: the table holds only those that still work."""
        now = time.time()
        db.execute("DELETE FROM sessions WHERE (student_id LIKE ? AND created < ?) OR created < ?",
                   (GUEST_PREFIX + "%", now - GUEST_SESSION_DAYS * DAY_SECONDS, now - self.session_days * DAY_SECONDS))

    def end_sessions(self, student_id):
        """Sign a student out everywhere (the teacher's 'disconnect')."""
        with self._connect() as db:
            db.execute("DELETE FROM sessions WHERE student_id = ?", (student_id,))

    # ---- documents ---------------------------------------------------------------------

    def publish(self, session, text, model, settings):
        """Store a read-only copy of a document; return its unguessable id."""
        document_id = secrets.token_urlsafe(16)  # 128 random bits
        with self._connect() as db:
            db.execute("INSERT INTO documents VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (document_id, session.student_id, session.name, text, model, json.dumps(settings),
                        time.time()))
        return document_id

    def document(self, document_id):
        """One published document, or None."""
        with self._connect() as db:
            row = db.execute("SELECT * FROM documents WHERE id = ?", (document_id,)).fetchone()
        return _document(row) if row else None

    def documents(self, limit=200):
        """The most recently published documents, newest first."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM documents ORDER BY created DESC LIMIT ?", (limit,)).fetchall()
        return [_document(row) for row in rows]

    def count_documents(self, student_id=None):
        """How many documents a student (or, without one, the whole class) has published."""
        with self._connect() as db:
            if student_id is None:
                return db.execute("SELECT COUNT(*) FROM documents").fetchone()[0]
            return db.execute("SELECT COUNT(*) FROM documents WHERE student_id = ?", (student_id,)).fetchone()[0]

    # ---- class settings ----------------------------------------------------------------

    def load_setting(self, key, default):
        """A class-wide setting saved by the teacher."""
        with self._connect() as db:
            row = db.execute("SELECT value FROM class_settings WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def save_setting(self, key, value):
        """Save a class-wide setting."""
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO class_settings VALUES (?, ?)", (key, json.dumps(value)))


def _document(row):
    document_id, student_id, author, text, model, settings, created = row
    return Document(document_id, student_id, author, text, model, json.loads(settings), created)
